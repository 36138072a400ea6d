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
        w.record(100, Class::Success2xx, Duration::from_millis(5));
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
        w.record(7, Class::Success2xx, Duration::from_micros(i * 1000));
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
    w.record(40, Class::Success2xx, Duration::from_millis(1));
    assert_eq!(w.snapshot(40, Duration::from_secs(60)).requests(), 2);
    assert_eq!(w.snapshot(40, Duration::from_secs(30)).requests(), 1);
    assert_eq!(w.snapshot(69, Duration::from_secs(60)).requests(), 2);
    assert_eq!(w.snapshot(70, Duration::from_secs(60)).requests(), 1);
    // Second 71 lands in second 10's slot (61 slots): it must start from zero.
    w.record(71, Class::Success2xx, Duration::from_millis(1));
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

/// Records as worker `i` on this test's own thread.
fn as_worker<T>(i: usize, f: impl FnOnce() -> T) -> T {
    crate::worker::set_current(i);
    let out = f();
    crate::worker::set_current(0);
    out
}

#[test]
fn workers_record_into_their_own_shards_and_readers_sum_them() {
    crate::worker::reserve(2);
    let w = Window::new(Duration::from_secs(60));
    let life = Lifetime::default();
    assert_eq!((w.rings.len(), life.shards.len()), (2, 2));
    assert!(
        w.rings.iter().all(|r| r.get().is_none()),
        "rings are made on first use"
    );
    for (worker, class, ms) in [
        (0, Class::Success2xx, 1),
        (1, Class::Success2xx, 3),
        (1, Class::Server5xx, 600),
        (1, Class::Error, 0),
    ] {
        as_worker(worker, || {
            w.record(50, class, Duration::from_millis(ms));
            life.record(class, Duration::from_millis(ms));
        });
    }
    // Each worker's counts landed in its own shard.
    let in_shard = |i: usize| {
        life.shards[i]
            .classes
            .iter()
            .map(|c| c.load(Relaxed))
            .sum::<u64>()
    };
    assert_eq!((in_shard(0), in_shard(1)), (1, 3));
    let slot = |shard: usize| &w.rings[shard].get().unwrap()[50 % w.seconds];
    assert_eq!(slot(0).classes[0].load(Relaxed), 1);
    assert_eq!(slot(1).classes[0].load(Relaxed), 1);

    for s in [w.snapshot(50, Duration::from_secs(60)), life.snapshot()] {
        assert_eq!(s.requests(), 4);
        assert_eq!(s.failures(), 2);
        assert_eq!(s.quantile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(s.slower_than(Duration::from_millis(500)), 1);
    }
    let view = life.prometheus();
    assert_eq!(view.classes, [2, 0, 0, 1, 1]);
    // 1 ms, 3 ms and 600 ms against the edges 0.5, 1, 2.5, 5 ms ... 1 s.
    assert_eq!(&view.cumulative[..5], &[0, 1, 1, 2, 2]);
    assert_eq!(view.cumulative[10], 3);
    assert_eq!(*view.cumulative.last().unwrap(), 3);
    assert!((view.sum_seconds - 0.604).abs() < 1e-9);
}

#[test]
fn a_shard_stale_second_is_not_summed_with_another_shard_current_one() {
    crate::worker::reserve(2);
    let w = Window::new(Duration::from_secs(60));
    // Second 10 and second 71 share a slot in each shard's ring of 61.
    as_worker(1, || {
        w.record(10, Class::Server5xx, Duration::from_millis(1))
    });
    as_worker(0, || {
        w.record(71, Class::Success2xx, Duration::from_millis(1))
    });
    let s = w.snapshot(71, Duration::from_secs(60));
    assert_eq!((s.requests(), s.failures()), (1, 0));
}

#[test]
fn a_slot_allocates_only_the_chunks_its_latencies_fall_in() {
    let w = Window::new(Duration::from_secs(60));
    for ms in [1, 1, 3, 900] {
        w.record(8, Class::Success2xx, Duration::from_millis(ms));
    }
    let slot = &w.rings[0].get().unwrap()[8];
    let chunks = slot.latency.get().expect("a latency was recorded");
    let allocated: Vec<usize> = (0..CHUNKS).filter(|&i| chunks[i].get().is_some()).collect();
    // 1 ms and 3 ms lie in 2^9..2^10 and 2^11..2^12 µs, 900 ms in 2^19..2^20.
    assert_eq!(allocated, [9 - 4, 11 - 4, 19 - 4]);
    let s = w.snapshot(8, Duration::from_secs(60));
    assert_eq!(s.quantile(0.5), Some(Duration::from_millis(1)));
    assert_eq!(s.slower_than(Duration::from_millis(500)), 1);
    // The slot's next second starts from zero in every chunk it kept.
    w.record(8 + 61, Class::Success2xx, Duration::from_millis(3));
    let s = w.snapshot(8 + 61, Duration::from_secs(60));
    assert_eq!(
        (s.requests(), s.slower_than(Duration::from_millis(2))),
        (1, 1)
    );
    assert_eq!(s.quantile(0.0), s.quantile(1.0));
}
