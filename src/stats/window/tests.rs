use super::*;

#[test]
fn buckets_are_monotonic_and_within_two_percent() {
    let mut last = 0;
    for v in (0..2_000_000u64).step_by(7).chain([u32::MAX as u64 - 1]) {
        let b = bucket_of(v);
        assert!(b >= last, "bucket order broke at {v}");
        assert!(b < BUCKETS);
        last = b;
        if v > 0 {
            let err = (bucket_value(b) - v as f64).abs() / v as f64;
            assert!(err <= 0.02, "{v} µs → {} ({err})", bucket_value(b));
        }
    }
}

#[test]
fn counts_by_class_and_success_rate() {
    let w = Window::new(Duration::from_secs(60));
    for _ in 0..97 {
        w.record(100, Class::Informational2xx, Duration::from_millis(5));
    }
    w.record(100, Class::Client4xx, Duration::from_millis(5));
    w.record(100, Class::Server5xx, Duration::from_millis(5));
    w.record(100, Class::Error, Duration::ZERO);
    let s = w.snapshot(100, Duration::from_secs(60));
    assert_eq!(s.requests(), 100);
    assert_eq!(s.failures(), 2);
    assert_eq!(s.count(Class::Client4xx), 1);
    assert!((s.success_rate().unwrap() - 0.98).abs() < 1e-9);
}

#[test]
fn quantiles_follow_the_distribution() {
    let w = Window::new(Duration::from_secs(60));
    for i in 1..=1000u64 {
        w.record(7, Class::Informational2xx, Duration::from_micros(i * 1000));
    }
    let s = w.snapshot(7, Duration::from_secs(60));
    for (q, want_ms) in [(0.5, 500.0), (0.95, 950.0), (0.99, 990.0)] {
        let got = s.quantile(q).unwrap().as_secs_f64() * 1000.0;
        assert!((got - want_ms).abs() / want_ms < 0.02, "q{q}: {got} ms");
    }
    assert_eq!(s.slower_than(Duration::from_millis(900)), 100 - 1);
}

#[test]
fn old_seconds_fall_out_and_slots_are_reused() {
    let w = Window::new(Duration::from_secs(60));
    w.record(10, Class::Server5xx, Duration::from_millis(1));
    w.record(40, Class::Informational2xx, Duration::from_millis(1));
    assert_eq!(w.snapshot(40, Duration::from_secs(60)).requests(), 2);
    assert_eq!(w.snapshot(40, Duration::from_secs(30)).requests(), 1);
    assert_eq!(w.snapshot(69, Duration::from_secs(60)).requests(), 2);
    assert_eq!(w.snapshot(70, Duration::from_secs(60)).requests(), 1);
    // Second 71 lands in second 10's slot (61 slots): it must start from zero.
    w.record(71, Class::Informational2xx, Duration::from_millis(1));
    let s = w.snapshot(71, Duration::from_secs(60));
    assert_eq!(s.requests(), 2);
    assert_eq!(s.failures(), 0);
}

#[test]
fn empty_window_has_no_rates() {
    let w = Window::new(Duration::from_secs(60));
    let s = w.snapshot(5, Duration::from_secs(60));
    assert_eq!(s.success_rate(), None);
    assert_eq!(s.quantile(0.5), None);
}
