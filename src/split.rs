//! Choosing a backend for a request: the override header, else the sticky
//! key's bucket, else an independent weighted draw.
//!
//! Sticky assignment is `bucket = xxh3_64_with_seed(key, xxh3_64(route)) mod
//! 10000` (XXH3, 64-bit, as specified by the xxHash project; the seed is the
//! XXH3 of the route name so two routes spread one user differently). Backends
//! own consecutive bucket ranges in list order, sized by weight, so moving
//! weight from the first backend to the last only ever moves a user forward.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Number of sticky buckets.
pub const BUCKETS: u64 = 10_000;

/// The precomputed split of one route: built once per table, read per request.
#[derive(Debug, Clone)]
pub struct Split {
    /// Running sums of the weights, in backend order.
    cumulative: Box<[u64]>,
    /// Exclusive upper bucket of each backend, in backend order.
    bucket_ends: Box<[u64]>,
    seed: u64,
}

impl Split {
    /// `weights` must not all be zero (validation guarantees it).
    pub fn new(route: &str, weights: &[u32]) -> Self {
        let mut sum = 0u64;
        let cumulative: Box<[u64]> = weights
            .iter()
            .map(|w| {
                sum += *w as u64;
                sum
            })
            .collect();
        let total = sum.max(1);
        let bucket_ends = cumulative.iter().map(|c| c * BUCKETS / total).collect();
        Split {
            cumulative,
            bucket_ends,
            seed: route_seed(route),
        }
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// An independent weighted draw, using the thread's fast RNG.
    pub fn pick_random(&self) -> usize {
        self.pick_by_point(fastrand::u64(0..self.total().max(1)))
    }

    /// The backend owning `point` in `0..total weight`.
    pub fn pick_by_point(&self, point: u64) -> usize {
        self.cumulative
            .iter()
            .position(|c| point < *c)
            .unwrap_or(self.cumulative.len() - 1)
    }

    /// The backend a sticky key belongs to.
    pub fn pick_sticky(&self, key: &[u8]) -> usize {
        self.pick_bucket(bucket_with_seed(self.seed, key))
    }

    /// The backend owning `bucket` in `0..BUCKETS`.
    pub fn pick_bucket(&self, bucket: u64) -> usize {
        self.bucket_ends
            .iter()
            .position(|end| bucket < *end)
            .unwrap_or(self.bucket_ends.len() - 1)
    }
}

fn route_seed(route: &str) -> u64 {
    xxh3_64(route.as_bytes())
}

fn bucket_with_seed(seed: u64, key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, seed) % BUCKETS
}

/// The sticky bucket of `key` on `route`: the documented, stable function.
pub fn bucket(route: &str, key: &[u8]) -> u64 {
    bucket_with_seed(route_seed(route), key)
}

/// The value of cookie `name` in a `Cookie` header, without allocating.
pub fn cookie_value<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header
        .split(|b| *b == b';')
        .map(|pair| pair.trim_ascii())
        .find_map(|pair| {
            let rest = pair.strip_prefix(name.as_bytes())?;
            rest.strip_prefix(b"=")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_function_is_fixed() {
        // These values are the contract: a change here moves users between
        // backends on upgrade. Never update them to make a test pass.
        assert_eq!(bucket("api", b"user-1"), 4355);
        assert_eq!(bucket("api", b"42"), 1153);
        assert_eq!(bucket("web", b"42"), 3340);
    }

    #[test]
    fn buckets_follow_weights_in_order() {
        let s = Split::new("r", &[90, 10]);
        assert_eq!(s.pick_bucket(0), 0);
        assert_eq!(s.pick_bucket(8_999), 0);
        assert_eq!(s.pick_bucket(9_000), 1);
        assert_eq!(s.pick_bucket(9_999), 1);
        let s = Split::new("r", &[0, 5, 0, 5]);
        assert_eq!(s.pick_bucket(0), 1);
        assert_eq!(s.pick_bucket(4_999), 1);
        assert_eq!(s.pick_bucket(5_000), 3);
        assert_eq!(s.pick_by_point(0), 1);
        assert_eq!(s.pick_by_point(5), 3);
    }

    #[test]
    fn moving_weight_first_to_last_only_moves_users_forward() {
        let before = Split::new("r", &[70, 20, 10]);
        let after = Split::new("r", &[40, 20, 40]);
        for user in 0..20_000u32 {
            let key = user.to_string();
            let (a, b) = (
                before.pick_sticky(key.as_bytes()),
                after.pick_sticky(key.as_bytes()),
            );
            assert!(b >= a, "user {user} moved back from {a} to {b}");
        }
    }

    #[test]
    fn cookie_lookup() {
        let h = b"a=1; uid=abc; uidx=no";
        assert_eq!(cookie_value(h, "uid"), Some(&b"abc"[..]));
        assert_eq!(cookie_value(h, "a"), Some(&b"1"[..]));
        assert_eq!(cookie_value(h, "ui"), None);
        assert_eq!(cookie_value(b"", "uid"), None);
    }
}
