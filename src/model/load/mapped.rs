//! Weights that stay views of their file: a tensor of at least 2 MiB stored in the dtype it is
//! loaded in becomes a private memory map of its bytes, not a copy (smaller ones are read into
//! buffers by the caller).
//!
//! candle's CPU storage owns a `Vec`, and a `Vec` is freed through the global allocator. So this
//! module is the process's global allocator ([`Allocator`], the system one for everything else)
//! and places every mapped tensor inside one address range it reserved (1 TiB of address space,
//! no memory: `ps` shows it in VSZ): freeing a pointer in that range unmaps its pages. Nothing is
//! copied and no page is cleared: the pages are the page cache's own, counted in the process's
//! memory once a computation first touches them (as PyTorch's memory-mapped safetensors are).
//! The mapping is private: a write (candle never writes to a weight in inference) copies the page.
//!
//! Measured on SD 1.5's f32 folder (2-core VM, 2026-12-07): a load in 0.50-0.59 s and 0.50 GiB
//! instead of 1.4-6.6 s and 4.01 GiB (clearing fresh pages was most of that). The products run
//! at the owned buffers' speed when the mapping gets 2 MiB pages; a file the page cache already
//! holds in 4 KiB pages (copied or read just before) maps in those, and the products that
//! reread their weights ran 5-13% slower then (until the cache lets the file go).
//!
//! The file must not shrink while mapped (a read past its new end is a bus error, as with any
//! memory map, diffusers' included); this crate's own writers replace files by rename, which
//! leaves a mapped file whole. `INSTRUCTDIFFUSION_MMAP=0` reads into owned buffers instead.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The process's allocator: [`System`], except for the mapped regions of [`map_vec`]. A
/// program installs it with `#[global_allocator]` (the `instructdiffusion` binary does); in a
/// program that does not, [`map_vec`] maps nothing and weights are read into buffers.
pub struct Allocator;

/// Set by the first allocation through [`Allocator`]: it is then the global allocator, which
/// frees the mapped vectors.
static INSTALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The address range every mapped tensor is placed in (reserved once, `PROT_NONE`, no memory
/// committed): a pointer is a mapped tensor's exactly when it falls inside, decided with one
/// subtraction and no lock on every free.
const RANGE: usize = 1 << 40;
static RANGE_START: AtomicUsize = AtomicUsize::new(0);
/// Tensors mapped now.
static MAPPED: AtomicUsize = AtomicUsize::new(0);
/// The next free offset in the range (reset when nothing is mapped), under a lock taken only
/// to map or unmap a tensor.
static NEXT: Mutex<usize> = Mutex::new(0);

fn page() -> usize {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize
}

fn in_range(p: usize) -> bool {
    let start = RANGE_START.load(Ordering::Acquire);
    start != 0 && p.wrapping_sub(start) < RANGE
}

/// Puts the reservation back over a mapped tensor's pages (freeing them, and keeping the range
/// for this module alone).
///
/// # Safety
/// `data` and `bytes` are those of a vector from [`map_vec`], which is being freed.
unsafe fn release(data: usize, bytes: usize) {
    let base = data / page() * page();
    libc::mmap(
        base as *mut libc::c_void,
        data - base + bytes.max(1),
        libc::PROT_NONE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
        -1,
        0,
    );
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    if MAPPED.fetch_sub(1, Ordering::AcqRel) == 1 {
        *next = 0;
    }
}

unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if in_range(ptr as usize) {
            release(ptr as usize, layout.size())
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !in_range(ptr as usize) {
            return System.realloc(ptr, layout, new_size);
        }
        // A mapped vector that grows or shrinks becomes an ordinary allocation.
        let new = System.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            release(ptr as usize, layout.size());
        }
        new
    }
}

/// How many tensors are mapped now.
pub fn mapped_count() -> usize {
    MAPPED.load(Ordering::Acquire)
}

/// Whether loading maps tensors: where [`Allocator`] is the global allocator, and not when
/// `INSTRUCTDIFFUSION_MMAP=0`.
pub fn enabled() -> bool {
    INSTALLED.load(Ordering::Relaxed)
        && std::env::var("INSTRUCTDIFFUSION_MMAP").map_or(true, |v| v != "0")
}

/// `n` values of `T` stored at byte `offset` of `file`, as a vector that is a private map of
/// those bytes; `None` where they cannot be mapped (misaligned for `T`, the table full, the
/// map refused), and the caller reads them instead.
pub fn map_vec<T: Copy>(file: &File, offset: u64, n: usize) -> Option<Vec<T>> {
    use std::os::fd::AsRawFd;
    let bytes = n.checked_mul(std::mem::size_of::<T>())?;
    let aligned = (offset as usize).is_multiple_of(std::mem::align_of::<T>());
    if bytes == 0 || !aligned || !INSTALLED.load(Ordering::Relaxed) {
        return None;
    }
    let page = page();
    let base_off = offset as usize / page * page;
    let len = offset as usize - base_off + bytes;
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    if RANGE_START.load(Ordering::Acquire) == 0 {
        // SAFETY: a new reservation; the kernel picks the address.
        let r = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RANGE,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if r == libc::MAP_FAILED {
            return None;
        }
        RANGE_START.store(r as usize, Ordering::Release);
    }
    // The address agrees with the file offset modulo 2 MiB, so that the page cache's 2 MiB
    // folios (which the huge-page advice below asks reads to make) can be mapped whole: with
    // 4 KiB pages the products that reread their weights ran 5-13% slower.
    const HUGE: usize = 2 << 20;
    let start = RANGE_START.load(Ordering::Acquire);
    let want = base_off % HUGE;
    let mut at = start + *next;
    at += (want + HUGE - at % HUGE) % HUGE;
    if at + len > start + RANGE {
        return None;
    }
    // SAFETY: replaces pages of our own reservation (unused: `next` only grows while anything
    // is mapped) with a private map of the file we hold open.
    let got = unsafe {
        libc::mmap(
            at as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED,
            file.as_raw_fd(),
            base_off as libc::off_t,
        )
    };
    if got == libc::MAP_FAILED {
        return None;
    }
    *next = (at + len - start).next_multiple_of(page);
    MAPPED.fetch_add(1, Ordering::AcqRel);
    drop(next);
    // Huge pages where the kernel offers them for files. No read-ahead advice: reading now would
    // fill the page cache with 4 KiB pages, while the faults of the first use read in 2 MiB
    // folios under this advice (FilePmdMapped: 2.8 GB of SD 1.5's 3.4 GB UNet, measured).
    // SAFETY: advice on the mapping just made.
    unsafe { libc::madvise(got, len, libc::MADV_HUGEPAGE) };
    let data = at + (offset as usize - base_off);
    // SAFETY: `data` is aligned for `T` (the offset is, the mapping is page-aligned), valid for
    // `n` values (the mapping covers them; the caller checked they are inside the file), every
    // bit pattern is a value of the plain number types this is called with, and freeing the
    // vector comes back to `Allocator::dealloc`, which puts the reservation back.
    Some(unsafe { Vec::from_raw_parts(data as *mut T, n, n) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A mapped vector reads the file's values, is unmapped when dropped, and one that grows
    /// becomes an ordinary allocation with the same values.
    #[test]
    fn mapped_vectors_read_the_file_and_unmap_when_freed() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let values: Vec<f32> = (0..5000).map(|i| i as f32 * 0.5).collect();
        f.write_all(&[0u8; 12]).unwrap();
        for v in &values {
            f.write_all(&v.to_le_bytes()).unwrap();
        }
        f.flush().unwrap();
        let file = File::open(f.path()).unwrap();
        let v: Vec<f32> = map_vec(&file, 12, 5000).expect("maps");
        assert_eq!(v, values);
        assert!(in_range(v.as_ptr() as usize));
        drop(v);
        let mut w: Vec<f32> = map_vec(&file, 12 + 4 * 4096, 904).expect("maps");
        w.push(1.0);
        assert_eq!(w[..904], values[4096..]);
        assert_eq!(w[904], 1.0);
        drop(w);
        assert!(map_vec::<f32>(&file, 13, 10).is_none(), "misaligned");
    }
}
