//! Sliding windows of event time.
//!
//! A window is a ring of `BUCKETS` complete buckets plus the one being filled. Rates are read
//! from the complete buckets only, so a rate always spans exactly the configured window and
//! never a partly filled bucket. Rotation is lazy: nothing happens until a bucket is touched or
//! read, so a window costs nothing while its owner is idle.

/// Complete buckets per window; the bucket width is the window length divided by this.
pub(crate) const BUCKETS: usize = 10;
const SLOTS: usize = BUCKETS + 1;

/// What a bucket counts. Plain `Copy` structs of counters.
pub(crate) trait Counts: Copy + Default + PartialEq {
    fn merge(&mut self, other: &Self);
}

#[derive(Clone, Debug)]
pub(crate) struct Window<T> {
    slots: [T; SLOTS],
    /// Absolute index (time / bucket width) of the newest slot.
    head: u64,
    bucket_ns: u64,
}

/// The complete buckets of a window, summed, and how many of them satisfied a predicate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Summary<T> {
    pub total: T,
    pub active: usize,
    /// The most recent complete bucket.
    pub latest: T,
}

impl<T: Counts> Window<T> {
    pub fn new(now_ns: u64, window_ns: u64) -> Self {
        let bucket_ns = (window_ns / BUCKETS as u64).max(1);
        Self {
            slots: [T::default(); SLOTS],
            head: now_ns / bucket_ns,
            bucket_ns,
        }
    }

    fn slot(index: u64) -> usize {
        (index % SLOTS as u64) as usize
    }

    /// The bucket holding `now_ns`, rotating (and clearing) older ones as needed. Late events,
    /// older than the newest bucket, are counted in the newest bucket.
    pub fn current(&mut self, now_ns: u64) -> &mut T {
        let b = now_ns / self.bucket_ns;
        if b > self.head {
            let steps = (b - self.head).min(SLOTS as u64);
            for k in 1..=steps {
                self.slots[Self::slot(self.head + k)] = T::default();
            }
            self.head = b;
        }
        &mut self.slots[Self::slot(self.head)]
    }

    /// Bucket `index` as of now: empty when it has rotated out or is not reached yet.
    fn get(&self, index: u64) -> T {
        if index > self.head || index + (SLOTS as u64) <= self.head {
            T::default()
        } else {
            self.slots[Self::slot(index)]
        }
    }

    /// Sums the `BUCKETS` complete buckets before the one holding `now_ns`, counting how many
    /// of them satisfy `active`.
    pub fn summary(&self, now_ns: u64, active: impl Fn(&T) -> bool) -> Summary<T> {
        let b = (now_ns / self.bucket_ns).max(self.head);
        let mut total = T::default();
        let mut latest = T::default();
        let mut n = 0;
        for i in 0..BUCKETS as u64 {
            let Some(index) = (b + i).checked_sub(BUCKETS as u64) else {
                continue;
            };
            let c = self.get(index);
            if active(&c) {
                n += 1;
            }
            total.merge(&c);
            latest = c;
        }
        Summary {
            total,
            active: n,
            latest,
        }
    }

    /// True when every bucket still in the window, the current one included, is empty.
    pub fn is_quiet(&self, now_ns: u64) -> bool {
        let b = (now_ns / self.bucket_ns).max(self.head);
        (0..=BUCKETS as u64).all(|i| {
            b.checked_sub(i)
                .is_none_or(|index| self.get(index) == T::default())
        })
    }

    /// The span the complete buckets cover, in seconds.
    pub fn span_secs(&self) -> f64 {
        (self.bucket_ns * BUCKETS as u64) as f64 / 1e9
    }

    /// The part of the complete buckets' span since `since_ns` (when counting began), in
    /// seconds, at least one bucket: what a rate must be divided by while the window is
    /// still filling, so that a rate read early is not understated.
    pub fn covered_secs(&self, now_ns: u64, since_ns: u64) -> f64 {
        let end = (now_ns / self.bucket_ns).max(self.head) * self.bucket_ns;
        let start = end
            .saturating_sub(self.bucket_ns * BUCKETS as u64)
            .max(since_ns);
        end.saturating_sub(start).max(self.bucket_ns) as f64 / 1e9
    }
}

/// A percentage, 0 when the denominator is 0.
pub(crate) fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        part * 100.0 / whole
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Default, PartialEq, Debug)]
    struct N(u32);
    impl Counts for N {
        fn merge(&mut self, other: &Self) {
            self.0 += other.0;
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn complete_buckets_only_and_rotation() {
        let mut w = Window::<N>::new(0, 1000 * MS);
        for t in (0..1000).map(|i| i * MS) {
            w.current(t).0 += 1;
        }
        // At 999 ms the only complete buckets are before 900 ms.
        assert_eq!(w.summary(999 * MS, |c| c.0 > 0).total.0, 900);
        // At 1000 ms all ten 100 ms buckets are complete.
        let s = w.summary(1000 * MS, |c| c.0 > 0);
        assert_eq!((s.total.0, s.active), (1000, 10));
        // Half a second later, half of them have slid out.
        let s = w.summary(1500 * MS, |c| c.0 > 0);
        assert_eq!((s.total.0, s.active), (500, 5));
        assert!(!w.is_quiet(1500 * MS));
        assert!(w.is_quiet(2000 * MS));
        // Touching the window long after clears every stale bucket.
        w.current(10_000 * MS).0 += 1;
        assert_eq!(w.summary(10_100 * MS, |c| c.0 > 0).total.0, 1);
    }

    #[test]
    fn covered_span_while_filling() {
        let w = Window::<N>::new(250 * MS, 1000 * MS);
        // Counting began at 250 ms: at 1000 ms the complete buckets cover 750 ms of it.
        assert_eq!(w.covered_secs(1000 * MS, 250 * MS), 0.75);
        assert_eq!(w.covered_secs(1050 * MS, 250 * MS), 0.75);
        // Then the whole window, and never less than a bucket.
        assert_eq!(w.covered_secs(3000 * MS, 250 * MS), 1.0);
        assert_eq!(w.covered_secs(260 * MS, 250 * MS), 0.1);
    }

    #[test]
    fn late_events_count_in_newest_bucket() {
        let mut w = Window::<N>::new(0, 1000 * MS);
        w.current(500 * MS).0 += 1;
        w.current(100 * MS).0 += 1;
        assert_eq!(w.summary(600 * MS, |_| true).total.0, 2);
    }
}
