//! Which transport carries a file: a WebRTC data channel (low latency, peer to peer, no storage
//! round trip) or resumable HTTP parts through the store (reliable, parallel, persisted). The
//! rules are seed 001's, with its thresholds made configurable:
//!
//! 1. real-time data always goes over a data channel;
//! 2. below `small` bytes, a data channel (setting up an upload is not worth it);
//! 3. above `large` bytes, HTTP parts (reliability matters most);
//! 4. in between, datasets and models go over HTTP parts (they must persist) and anything else
//!    over a data channel.
//!
//! When a data channel was chosen but no peer connection opens in time, the file goes over HTTP
//! parts through the server instead ([`Choice::fall_back`]). Every choice carries its reason, so
//! the user can be told which transport and why.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    DataChannel,
    HttpParts,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::DataChannel => "data channel",
            Transport::HttpParts => "HTTP parts",
        })
    }
}

/// What a file is, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Dataset,
    Model,
    Other,
}

impl Kind {
    /// A guess from the file name's extension (`--kind` overrides it).
    pub fn guess(name: &str) -> Kind {
        let lower = name.to_ascii_lowercase();
        let ext = lower.rsplit_once('.').map_or("", |(_, e)| e);
        match ext {
            "pt" | "pth" | "ckpt" | "safetensors" | "onnx" | "gguf" | "pb" | "tflite" | "keras" | "mlmodel" => {
                Kind::Model
            }
            "csv" | "tsv" | "parquet" | "jsonl" | "ndjson" | "arrow" | "feather" | "tfrecord" | "npy" | "npz"
            | "h5" | "hdf5" | "avro" | "orc" => Kind::Dataset,
            _ => Kind::Other,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Dataset => "a dataset",
            Kind::Model => "a model",
            Kind::Other => "neither a dataset nor a model",
        })
    }
}

/// The size limits of rules 2 and 3 (seed 001: 10 MB and 100 MB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub small: u64,
    pub large: u64,
}

impl Default for Thresholds {
    fn default() -> Thresholds {
        Thresholds { small: 10_000_000, large: 100_000_000 }
    }
}

impl Thresholds {
    pub fn new(small: u64, large: u64) -> Result<Thresholds, String> {
        if small > large {
            return Err(format!("the small-file limit ({small} bytes) is above the large-file limit ({large} bytes)"));
        }
        Ok(Thresholds { small, large })
    }
}

/// Why a transport was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum Reason {
    Realtime,
    Small {
        size: u64,
        limit: u64,
    },
    Large {
        size: u64,
        limit: u64,
    },
    MustPersist {
        kind: Kind,
    },
    Convenient {
        kind: Kind,
    },
    /// A data channel was chosen, but no peer connection opened within `waited_ms`.
    PeerUnreachable {
        waited_ms: u64,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Realtime => f.write_str("real-time data always goes over a data channel"),
            Reason::Small { size, limit } => {
                write!(f, "{size} bytes is under {limit}: setting up an upload is not worth it")
            }
            Reason::Large { size, limit } => write!(f, "{size} bytes is over {limit}: reliability matters most"),
            Reason::MustPersist { kind } => write!(f, "a medium-sized file that is {kind} must persist"),
            Reason::Convenient { kind } => write!(f, "a medium-sized file that is {kind} goes the quick way"),
            Reason::PeerUnreachable { waited_ms } => {
                write!(f, "no peer connection opened within {:.1} s, so through the server", *waited_ms as f64 / 1000.0)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Choice {
    pub transport: Transport,
    pub reason: Reason,
}

impl Choice {
    /// The choice for a file of `size` bytes that is `kind`.
    pub fn new(size: u64, kind: Kind, realtime: bool, t: &Thresholds) -> Choice {
        let (transport, reason) = if realtime {
            (Transport::DataChannel, Reason::Realtime)
        } else if size < t.small {
            (Transport::DataChannel, Reason::Small { size, limit: t.small })
        } else if size > t.large {
            (Transport::HttpParts, Reason::Large { size, limit: t.large })
        } else if matches!(kind, Kind::Dataset | Kind::Model) {
            (Transport::HttpParts, Reason::MustPersist { kind })
        } else {
            (Transport::DataChannel, Reason::Convenient { kind })
        };
        Choice { transport, reason }
    }

    /// What to do when the peer connection a data channel needs did not open within `waited`:
    /// HTTP parts through the server. A choice of HTTP parts stays as it is.
    pub fn fall_back(self, waited: Duration) -> Choice {
        match self.transport {
            Transport::HttpParts => self,
            Transport::DataChannel => Choice {
                transport: Transport::HttpParts,
                reason: Reason::PeerUnreachable { waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX) },
            },
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.transport, self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Transport::*;

    #[test]
    fn every_rule_at_and_around_its_limits() {
        let t = Thresholds::default();
        let kinds = [Kind::Dataset, Kind::Model, Kind::Other];
        let sizes =
            [0, 1, 9_999_999, 10_000_000, 10_000_001, 55_000_000, 99_999_999, 100_000_000, 100_000_001, u64::MAX];
        for size in sizes {
            for kind in kinds {
                // Rule 1 wins over everything.
                assert_eq!(
                    Choice::new(size, kind, true, &t),
                    Choice { transport: DataChannel, reason: Reason::Realtime }
                );
                let c = Choice::new(size, kind, false, &t);
                let want = if size < 10_000_000 {
                    DataChannel
                } else if size > 100_000_000 {
                    HttpParts
                } else if kind == Kind::Other {
                    DataChannel
                } else {
                    HttpParts
                };
                assert_eq!(c.transport, want, "{size} bytes, {kind:?}: {c}");
            }
        }
        // Both limits belong to the middle band (seed 001's sketch let exactly 100 MB of a
        // dataset slip through to its default).
        assert_eq!(
            Choice::new(100_000_000, Kind::Dataset, false, &t).reason,
            Reason::MustPersist { kind: Kind::Dataset }
        );
        assert_eq!(Choice::new(10_000_000, Kind::Other, false, &t).reason, Reason::Convenient { kind: Kind::Other });
    }

    #[test]
    fn thresholds_are_configurable_and_checked() {
        let t = Thresholds::new(1000, 1000).unwrap();
        assert_eq!(Choice::new(999, Kind::Model, false, &t).transport, DataChannel);
        assert_eq!(Choice::new(1000, Kind::Model, false, &t).transport, HttpParts);
        assert_eq!(Choice::new(1000, Kind::Other, false, &t).transport, DataChannel);
        assert_eq!(Choice::new(1001, Kind::Other, false, &t).transport, HttpParts);
        assert!(Thresholds::new(2, 1).is_err());
        // Everything over HTTP parts, or everything over a data channel, are both expressible.
        assert_eq!(Choice::new(0, Kind::Other, false, &Thresholds::new(0, 0).unwrap()).transport, DataChannel);
        assert_eq!(Choice::new(1, Kind::Other, false, &Thresholds::new(0, 0).unwrap()).transport, HttpParts);
        assert_eq!(
            Choice::new(u64::MAX - 1, Kind::Model, false, &Thresholds::new(u64::MAX, u64::MAX).unwrap()).transport,
            DataChannel
        );
    }

    #[test]
    fn falling_back_goes_through_the_server_and_says_why() {
        let t = Thresholds::default();
        let small = Choice::new(5, Kind::Other, false, &t);
        let fell = small.fall_back(Duration::from_millis(10_500));
        assert_eq!(fell, Choice { transport: HttpParts, reason: Reason::PeerUnreachable { waited_ms: 10_500 } });
        assert_eq!(fell.to_string(), "HTTP parts: no peer connection opened within 10.5 s, so through the server");
        let large = Choice::new(u64::MAX, Kind::Other, false, &t);
        assert_eq!(large.clone().fall_back(Duration::from_secs(1)), large, "HTTP parts stay");
        assert_eq!(
            Choice::new(5, Kind::Other, false, &t).to_string(),
            "data channel: 5 bytes is under 10000000: setting up an upload is not worth it"
        );
        assert_eq!(
            serde_json::to_value(Choice::new(5, Kind::Other, true, &t)).unwrap(),
            serde_json::json!({"transport": "data_channel", "reason": {"rule": "realtime"}})
        );
    }

    #[test]
    fn kinds_from_names() {
        for (name, kind) in [
            ("weights.safetensors", Kind::Model),
            ("CHECKPOINT.PT", Kind::Model),
            ("model.onnx", Kind::Model),
            ("train.parquet", Kind::Dataset),
            ("rows.csv", Kind::Dataset),
            ("a.b.jsonl", Kind::Dataset),
            ("clip.mp4", Kind::Other),
            ("README", Kind::Other),
            (".csv", Kind::Dataset),
            ("", Kind::Other),
            ("dir.pt/file", Kind::Other),
        ] {
            assert_eq!(Kind::guess(name), kind, "{name}");
        }
    }
}
