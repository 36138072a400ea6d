//! Anytime-valid evidence that a canary's rate of bad events (failures, or
//! responses slower than a line) is above a limit.
//!
//! Gates are judged every `interval`, so a test that is only valid for one
//! look (a z-test, a fixed-sample binomial test) rolls back healthy canaries
//! more often the more often it looks. This module uses a mixture sequential
//! probability ratio test instead, the family Netflix uses for its canaries
//! (Lindon, Sanden, Shirikian, KDD 2022):
//!
//! * Under H0 "the bad-event rate is at most `p0`", the mixture likelihood
//!   ratio `M_n = Σ_j w_j Π_i (p_j/p0)^x_i ((1-p_j)/(1-p0))^(1-x_i)` over
//!   alternatives `p_j > p0` is a non-negative supermartingale with
//!   `M_0 = 1`, so by Ville's inequality `P(sup_n M_n ≥ 1/α) ≤ α`: rejecting
//!   when `M_n ≥ 1/α` is wrong with probability at most α *however often and
//!   whenever* it is checked.
//! * A canary that turns bad late in a long bake would be caught slowly by a
//!   test that started at the stage start (its likelihood ratio has drifted
//!   far below 1). So a new test also starts at every checkpoint (each
//!   `window` of the bake), and test `k` (1-based) spends
//!   `α_k = α · 6 / (π² k²)`; the union over all tests still errs with
//!   probability at most `Σ α_k = α`.
//!
//! The alternatives are a fixed geometric grid above `p0`, equally weighted:
//! near ones give power against small excesses, far ones detect a broken
//! canary within a few dozen requests.

/// Multiples of `p0` used as alternatives (capped below 1).
const GRID: [f64; 10] = [1.25, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0];

/// `ln M_n` for `bad` bad events among `n`, against the limit `p0`.
pub fn log_evidence(bad: u64, n: u64, p0: f64) -> f64 {
    if n == 0 || p0 >= 1.0 {
        return 0.0;
    }
    let p0 = p0.max(1e-9);
    let (x, y) = (bad as f64, (n - bad.min(n)) as f64);
    let mut terms = [f64::NEG_INFINITY; GRID.len()];
    let mut used = 0;
    for m in GRID {
        let p = (p0 * m).min(0.999_999);
        if p <= p0 {
            continue;
        }
        terms[used] = x * (p / p0).ln() + y * ((1.0 - p) / (1.0 - p0)).ln();
        used += 1;
    }
    if used == 0 {
        return 0.0;
    }
    let max = terms[..used]
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = terms[..used].iter().map(|t| (t - max).exp()).sum();
    max + sum.ln() - (used as f64).ln()
}

/// The evidence threshold (`ln(1/α_k)`) for the `k`-th test (1-based) of a
/// rollout stage whose overall error budget is `1 - confidence`.
pub fn threshold(confidence: f64, k: u32) -> f64 {
    let alpha = (1.0 - confidence).clamp(1e-12, 0.5);
    let k = k.max(1) as f64;
    let alpha_k = alpha * 6.0 / (std::f64::consts::PI.powi(2) * k * k);
    (1.0 / alpha_k).ln()
}

/// Whether `bad` of `n` is enough to say, with `confidence`, that the rate
/// is above `p0`, for test number `k`.
pub fn exceeds(bad: u64, n: u64, p0: f64, confidence: f64, k: u32) -> bool {
    log_evidence(bad, n, p0) >= threshold(confidence, k)
}

#[cfg(test)]
mod tests;
