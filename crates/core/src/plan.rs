//! Part planning: turning an object size (and perhaps a requested part size) into a list of parts
//! that a storage backend accepts.

use serde::Serialize;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;
pub const TIB: u64 = 1024 * GIB;

/// What a storage backend accepts for one multipart object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min_part_size: u64,
    pub max_part_size: u64,
    pub max_parts: u32,
    pub max_object_size: u64,
}

impl Limits {
    /// The embedded filesystem store's limits.
    pub const EMBEDDED: Limits =
        Limits { min_part_size: 64 * KIB, max_part_size: 5 * GIB, max_parts: 10_000, max_object_size: 5 * TIB };

    pub fn with_max_object_size(self, max_object_size: u64) -> Limits {
        Limits { max_object_size, ..self }
    }
}

/// Why a plan cannot be made. Each names the limit so a client can correct its request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("object size {size} exceeds the maximum of {max} bytes")]
    ObjectTooLarge { size: u64, max: u64 },
    #[error("part size {part_size} is below the minimum of {min} bytes")]
    PartTooSmall { part_size: u64, min: u64 },
    #[error("part size {part_size} exceeds the maximum of {max} bytes")]
    PartTooLarge { part_size: u64, max: u64 },
    #[error("{size} bytes in parts of {part_size} bytes needs {needed} parts; the maximum is {max}")]
    TooManyParts { size: u64, part_size: u64, needed: u64, max: u32 },
}

/// Why parts sent without a plan (the object's size unknown when they were) do not make an object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("no parts were uploaded")]
    Empty,
    #[error("part {0} is missing")]
    Missing(u32),
    #[error("part {part} is {size} bytes; every part but the last must be {expected} bytes, and the last no larger")]
    Irregular { part: u32, size: u64, expected: u64 },
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// One part of a plan: 1-based number, byte offset in the object and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartSpan {
    pub part_number: u32,
    pub offset: u64,
    pub size: u64,
}

/// A validated division of `size` bytes into `part_count` parts of `part_size` bytes (the last may
/// be shorter). An empty object has one empty part, so that every object has something to upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    size: u64,
    part_size: u64,
    part_count: u32,
}

/// The default part size: at least 8 MiB, large enough to stay within 10,000 parts, in whole MiB.
pub fn default_part_size(size: u64) -> u64 {
    let spread = size.div_ceil(10_000);
    spread.div_ceil(MIB).saturating_mul(MIB).max(8 * MIB)
}

impl PartPlan {
    pub fn new(size: u64, requested: Option<u64>, limits: &Limits) -> Result<PartPlan, PlanError> {
        if size > limits.max_object_size {
            return Err(PlanError::ObjectTooLarge { size, max: limits.max_object_size });
        }
        let part_size = match requested {
            Some(p) => p,
            None => default_part_size(size).clamp(limits.min_part_size, limits.max_part_size),
        };
        if part_size < limits.min_part_size {
            return Err(PlanError::PartTooSmall { part_size, min: limits.min_part_size });
        }
        if part_size > limits.max_part_size {
            return Err(PlanError::PartTooLarge { part_size, max: limits.max_part_size });
        }
        let needed = size.div_ceil(part_size).max(1);
        if needed > u64::from(limits.max_parts) {
            return Err(PlanError::TooManyParts { size, part_size, needed, max: limits.max_parts });
        }
        // `needed` ≤ max_parts, a u32, so the conversion cannot fail.
        let part_count = u32::try_from(needed).unwrap_or(u32::MAX);
        Ok(PartPlan { size, part_size, part_count })
    }

    /// Rebuilds a plan that was validated earlier (e.g. read back from a session record).
    pub fn from_parts(size: u64, part_size: u64, part_count: u32) -> Option<PartPlan> {
        let ok = part_size > 0 && u64::from(part_count) == size.div_ceil(part_size).max(1);
        ok.then_some(PartPlan { size, part_size, part_count })
    }

    /// The plan that parts sent without one make (`(part number, size)`, in any order): numbered
    /// 1 to N with no gap, each the size of the first but the last, which is no larger, all
    /// within `limits`.
    pub fn from_uploaded(parts: &[(u32, u64)], limits: &Limits) -> Result<PartPlan, LayoutError> {
        let mut parts = parts.to_vec();
        parts.sort_unstable();
        let (Some(&(_, first)), Some(&(last_number, _))) = (parts.first(), parts.last()) else {
            return Err(LayoutError::Empty);
        };
        if let Some(gap) = (1..=last_number).zip(&parts).find(|(n, (p, _))| n != p) {
            return Err(LayoutError::Missing(gap.0));
        }
        let size: u64 = parts.iter().map(|(_, s)| s).sum();
        let part_size = if parts.len() == 1 { size.max(limits.min_part_size) } else { first };
        let plan = PartPlan::new(size, Some(part_size), limits)?;
        if plan.part_count() as usize != parts.len() {
            let (part, size) = parts[plan.part_count().min(last_number) as usize - 1];
            return Err(LayoutError::Irregular { part, size, expected: part_size });
        }
        for (span, (n, s)) in plan.parts().zip(&parts) {
            if span.size != *s {
                return Err(LayoutError::Irregular { part: *n, size: *s, expected: part_size });
            }
        }
        Ok(plan)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn part_size(&self) -> u64 {
        self.part_size
    }

    pub fn part_count(&self) -> u32 {
        self.part_count
    }

    /// The span of part `n` (1-based), or `None` when `n` is outside the plan.
    pub fn part(&self, n: u32) -> Option<PartSpan> {
        if n == 0 || n > self.part_count {
            return None;
        }
        let offset = u64::from(n - 1) * self.part_size;
        let size = self.part_size.min(self.size - offset);
        Some(PartSpan { part_number: n, offset, size })
    }

    pub fn parts(&self) -> impl Iterator<Item = PartSpan> + '_ {
        (1..=self.part_count).filter_map(|n| self.part(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits::EMBEDDED;

    #[test]
    fn default_part_size_is_8_mib_until_10000_parts_no_longer_fit() {
        assert_eq!(default_part_size(0), 8 * MIB);
        assert_eq!(default_part_size(80_000 * MIB), 8 * MIB);
        assert_eq!(default_part_size(80_000 * MIB + 1), 9 * MIB);
        let five_tib = PartPlan::new(5 * TIB, None, &L).unwrap();
        assert_eq!(five_tib.part_size() % MIB, 0);
        assert!(five_tib.part_count() <= 10_000);
    }

    #[test]
    fn parts_cover_the_object_exactly() {
        for (size, part) in
            [(0, 64 * KIB), (1, 64 * KIB), (64 * KIB, 64 * KIB), (64 * KIB + 1, 64 * KIB), (10 * MIB + 7, MIB)]
        {
            let plan = PartPlan::new(size, Some(part), &L).unwrap();
            let spans: Vec<_> = plan.parts().collect();
            assert_eq!(spans.len() as u32, plan.part_count());
            let mut next = 0;
            for (i, s) in spans.iter().enumerate() {
                assert_eq!(s.part_number as usize, i + 1);
                assert_eq!(s.offset, next);
                next += s.size;
                if i + 1 < spans.len() {
                    assert_eq!(s.size, part);
                }
            }
            assert_eq!(next, size);
        }
    }

    #[test]
    fn empty_object_has_one_empty_part() {
        let plan = PartPlan::new(0, None, &L).unwrap();
        assert_eq!(plan.part_count(), 1);
        assert_eq!(plan.part(1), Some(PartSpan { part_number: 1, offset: 0, size: 0 }));
    }

    #[test]
    fn part_larger_than_object_is_one_part() {
        let plan = PartPlan::new(1000, Some(MIB), &L).unwrap();
        assert_eq!(plan.part_count(), 1);
        assert_eq!(plan.part(1).unwrap().size, 1000);
    }

    #[test]
    fn limits_are_enforced_at_their_edges() {
        assert!(PartPlan::new(MIB, Some(64 * KIB), &L).is_ok());
        assert_eq!(
            PartPlan::new(MIB, Some(64 * KIB - 1), &L),
            Err(PlanError::PartTooSmall { part_size: 64 * KIB - 1, min: 64 * KIB })
        );
        assert!(PartPlan::new(5 * GIB, Some(5 * GIB), &L).is_ok());
        assert!(matches!(PartPlan::new(6 * GIB, Some(5 * GIB + 1), &L), Err(PlanError::PartTooLarge { .. })));
        assert!(PartPlan::new(5 * TIB, None, &L).is_ok());
        assert!(matches!(PartPlan::new(5 * TIB + 1, None, &L), Err(PlanError::ObjectTooLarge { .. })));
        assert!(PartPlan::new(10_000 * 64 * KIB, Some(64 * KIB), &L).is_ok());
        assert_eq!(
            PartPlan::new(10_000 * 64 * KIB + 1, Some(64 * KIB), &L),
            Err(PlanError::TooManyParts {
                size: 10_000 * 64 * KIB + 1,
                part_size: 64 * KIB,
                needed: 10_001,
                max: 10_000
            })
        );
        assert!(PartPlan::new(u64::MAX, None, &L.with_max_object_size(u64::MAX)).is_err());
    }

    #[test]
    fn part_numbers_outside_the_plan_have_no_span() {
        let plan = PartPlan::new(3 * MIB, Some(MIB), &L).unwrap();
        assert_eq!(plan.part(0), None);
        assert_eq!(plan.part(4), None);
        assert_eq!(plan.part(u32::MAX), None);
        assert_eq!(plan.part(3).unwrap().offset, 2 * MIB);
    }

    #[test]
    fn from_parts_rejects_inconsistent_records() {
        assert!(PartPlan::from_parts(3 * MIB, MIB, 3).is_some());
        assert!(PartPlan::from_parts(3 * MIB, MIB, 4).is_none());
        assert!(PartPlan::from_parts(3 * MIB, 0, 1).is_none());
    }

    #[test]
    fn plans_from_uploaded_parts() {
        let l = Limits::EMBEDDED;
        let k = 64 * KIB;
        let plan = PartPlan::from_uploaded(&[(2, k), (1, k), (3, 10)], &l).unwrap();
        assert_eq!((plan.size(), plan.part_size(), plan.part_count()), (2 * k + 10, k, 3));
        let plan = PartPlan::from_uploaded(&[(1, k), (2, k)], &l).unwrap();
        assert_eq!((plan.size(), plan.part_count()), (2 * k, 2));
        // One part of any size, even below the minimum.
        let plan = PartPlan::from_uploaded(&[(1, 5)], &l).unwrap();
        assert_eq!((plan.size(), plan.part_count(), plan.part(1).unwrap().size), (5, 1, 5));
        assert_eq!(PartPlan::from_uploaded(&[], &l), Err(LayoutError::Empty));
        assert_eq!(PartPlan::from_uploaded(&[(1, k), (3, k)], &l), Err(LayoutError::Missing(2)));
        assert_eq!(PartPlan::from_uploaded(&[(2, k)], &l), Err(LayoutError::Missing(1)));
        // A middle part of another size, a last part larger than the others, a first below the minimum.
        assert!(matches!(
            PartPlan::from_uploaded(&[(1, k), (2, k + 1), (3, 5)], &l),
            Err(LayoutError::Irregular { part: 2, .. })
        ));
        assert!(matches!(
            PartPlan::from_uploaded(&[(1, k), (2, k + 1)], &l),
            Err(LayoutError::Irregular { part: 2, .. })
        ));
        assert!(matches!(
            PartPlan::from_uploaded(&[(1, 10), (2, 5)], &l),
            Err(LayoutError::Plan(PlanError::PartTooSmall { .. }))
        ));
        let huge = Limits { max_object_size: 3 * k, ..l };
        assert!(matches!(
            PartPlan::from_uploaded(&[(1, k), (2, k), (3, k), (4, 1)], &huge),
            Err(LayoutError::Plan(PlanError::ObjectTooLarge { .. }))
        ));
    }
}
