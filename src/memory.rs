//! Handing the memory of parked connections back to the system.
//!
//! The binary's allocator, mimalloc, gives the pages of freed memory back
//! to the system a while after they became free (its purge delay, a
//! second), but only when some thread next calls into it past that delay:
//! a proxy whose connections all went quiet and parked makes no such call,
//! and would keep the 16 KiB of buffers each parked connection freed
//! (22.5 KiB per idle keep-alive connection at 1 000 connections, measured,
//! against 4.6–5.3 KiB with them given back). A side thread asks mimalloc
//! to give back the free pages its arenas hold now, whichever thread freed
//! them (`mi_collect`), only after connections were parked, never on a
//! busy proxy. A purge delay of zero would do it without the thread, but
//! at load it cost a page fault per request and a system call every dozen
//! (measured).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

/// How often the trimming thread looks.
const EVERY: Duration = Duration::from_millis(250);

/// Buffers freed by parking since the last trim: below this, not worth it.
const WORTH_TRIMMING: usize = 1 << 20;

/// What hyper allocates per HTTP/1.1 connection (read and head buffers).
pub const PARKED_CONNECTION_BYTES: usize = 16 << 10;

static FREED: AtomicUsize = AtomicUsize::new(0);

/// Records `bytes` freed; starts the trimming thread on first use.
pub fn freed(bytes: usize) {
    FREED.fetch_add(bytes, Relaxed);
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let _ = std::thread::Builder::new()
            .name("sluice-trim".into())
            .spawn(|| loop {
                std::thread::sleep(EVERY);
                if FREED.load(Relaxed) >= WORTH_TRIMMING {
                    FREED.store(0, Relaxed);
                    trim();
                }
            });
    });
}

#[allow(unsafe_code)]
fn trim() {
    // SAFETY: neither call takes pointers; both are safe from any thread.
    // mi_collect collects the calling thread's own heap and then, forced,
    // purges every free page that went back to mimalloc's arenas,
    // whichever thread freed it; on a thread whose heap was never set up
    // (this one allocates nothing itself) it would return before the
    // purge, hence mi_thread_init first (which does nothing the second
    // time). Pages a worker still holds (the last free page it keeps per
    // size, blocks another thread freed into its pages) wait for that
    // worker's next allocations. In a process whose global allocator is
    // not mimalloc (the library's tests) there is nothing to give back.
    unsafe {
        libmimalloc_sys::mi_thread_init();
        libmimalloc_sys::mi_collect(true);
    }
}

/// The binary's global allocator: mimalloc, asked for alignment only when
/// a type needs more than every block has anyway.
///
/// The `mimalloc` crate passes every request to `mi_malloc_aligned`, and
/// mimalloc 3 serves that from its fast path only for blocks up to 1 KiB;
/// any larger block whose size is not a power of two (hyper's 8 KiB read
/// buffer after its header room, a header map's entries) takes the
/// over-allocating path, a few times every request (benches/RESULTS.md
/// has the counts before and after). Every mimalloc
/// block is aligned to 16 bytes, and to its size below that, so
/// `mi_malloc` serves what asks no more, as Rust's own system allocator
/// does with `malloc`.
pub struct Allocator;

/// The alignment every mimalloc block has (`MI_MAX_ALIGN_SIZE`).
const BLOCK_ALIGN: usize = 16;

/// Whether a plain block satisfies `layout`: blocks smaller than 16 bytes
/// are aligned to their size rounded up to a power of two, so an alignment
/// above the size could miss.
fn plain_fits(align: usize, size: usize) -> bool {
    align <= BLOCK_ALIGN && align <= size
}

#[allow(unsafe_code)]
// SAFETY: mimalloc returns null or a block of at least `size` bytes with
// the alignment asked (or, for the plain calls, the alignment `plain_fits`
// vouches for); `mi_free` and `mi_realloc*` take any block mimalloc made,
// aligned or not.
unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_malloc, mi_malloc_aligned};
        // SAFETY: see the impl.
        unsafe {
            if plain_fits(layout.align(), layout.size()) {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};
        // SAFETY: see the impl.
        unsafe {
            if plain_fits(layout.align(), layout.size()) {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: see the impl.
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys::{mi_realloc, mi_realloc_aligned};
        // SAFETY: see the impl.
        unsafe {
            if plain_fits(layout.align(), new_size) {
                mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Allocator;
    use std::alloc::{GlobalAlloc, Layout};

    /// Every size class either path serves, and alignments on both sides
    /// of 16: each block has its alignment, keeps its bytes through a
    /// realloc to a size on the other side of 1 KiB, and zeroed blocks are
    /// zero.
    #[test]
    #[allow(unsafe_code)]
    fn blocks_have_their_alignment_and_keep_their_bytes() {
        for size in [
            1,
            3,
            8,
            12,
            16,
            24,
            100,
            1000,
            1025,
            4000,
            8192 + 40,
            70_000,
        ] {
            for align in [1, 2, 8, 16, 32, 64, 128, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: layouts of nonzero size; each block is freed once,
                // with the layout it has.
                unsafe {
                    let zeroed = Allocator.alloc_zeroed(layout);
                    assert!(!zeroed.is_null());
                    assert_eq!(zeroed as usize % align, 0, "zeroed {size}/{align}");
                    assert!(std::slice::from_raw_parts(zeroed, size)
                        .iter()
                        .all(|&b| b == 0));
                    Allocator.dealloc(zeroed, layout);

                    let block = Allocator.alloc(layout);
                    assert_eq!(block as usize % align, 0, "{size}/{align}");
                    for i in 0..size {
                        block.add(i).write(i as u8);
                    }
                    let new_size = if size > 1024 {
                        size / 3 + 1
                    } else {
                        size * 5 + 1100
                    };
                    let moved = Allocator.realloc(block, layout, new_size);
                    assert_eq!(moved as usize % align, 0, "realloc {size}/{align}");
                    for i in 0..size.min(new_size) {
                        assert_eq!(moved.add(i).read(), i as u8, "byte {i} of {size}/{align}");
                    }
                    Allocator.dealloc(moved, Layout::from_size_align(new_size, align).unwrap());
                }
            }
        }
    }
}
