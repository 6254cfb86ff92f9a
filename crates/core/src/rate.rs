//! Counting events against a limit per time window (keepalives, signaling messages). Time is an
//! argument, as everywhere in this crate.

use std::time::{Duration, Instant};

/// At most `max` events in any fixed window of `window` that starts at the first event after the
/// previous window ended.
#[derive(Debug, Clone)]
pub struct Window {
    max: u32,
    window: Duration,
    started: Option<Instant>,
    count: u32,
}

impl Window {
    pub fn new(max: u32, window: Duration) -> Window {
        Window { max, window, started: None, count: 0 }
    }

    /// Counts an event at `now`; false once the limit is passed.
    pub fn hit(&mut self, now: Instant) -> bool {
        match self.started {
            Some(s) if now.saturating_duration_since(s) < self.window => self.count = self.count.saturating_add(1),
            _ => {
                self.started = Some(now);
                self.count = 1;
            }
        }
        self.count <= self.max
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    pub fn window(&self) -> Duration {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_its_limit_then_refuses_until_it_ends() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Window::new(2, ms(100));
        assert!(w.hit(t0) && w.hit(t0 + ms(10)));
        assert!(!w.hit(t0 + ms(20)));
        assert!(!w.hit(t0 + ms(99)));
        assert!(w.hit(t0 + ms(100)), "a new window");
        assert!(w.hit(t0 + ms(150)));
        assert!(!w.hit(t0 + ms(160)));
    }
}
