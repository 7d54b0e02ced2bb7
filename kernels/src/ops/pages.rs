//! Buffers for weights that decoding streams once per token: aligned to 2 MiB and backed, where
//! Linux allows, by transparent huge pages. With 4 KiB pages the hardware prefetchers stop at
//! every page boundary and every 4 KiB of a stream costs a TLB miss; on the 2-vCPU host, all of
//! SmolLM2's few-row products ran at 64 GB/s on 4 KiB pages and 72 GB/s on huge pages, against
//! a read bandwidth of 80-87 GB/s (BENCHMARKS-engine.md, "Session 10").

use std::alloc::{Layout, alloc, dealloc};
use std::ptr::NonNull;

/// The huge-page size on x86-64 and the buffers' alignment.
const HUGE: usize = 2 << 20;

/// A zero-initialised slice of `T` aligned to 2 MiB, its pages advised as huge
/// (`madvise(MADV_HUGEPAGE)`, which the default `madvise` mode of THP honours) before anything
/// touches them. Only advice: where it is refused (THP off, another OS) the buffer has ordinary
/// pages and the same contents.
pub struct HugeBuf<T: bytemuck::Zeroable + Copy> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: HugeBuf owns its elements like a Box<[T]>.
unsafe impl<T: bytemuck::Zeroable + Copy + Send> Send for HugeBuf<T> {}
unsafe impl<T: bytemuck::Zeroable + Copy + Sync> Sync for HugeBuf<T> {}

impl<T: bytemuck::Zeroable + Copy> HugeBuf<T> {
    fn layout(len: usize) -> Layout {
        let bytes = (len * std::mem::size_of::<T>()).next_multiple_of(HUGE);
        Layout::from_size_align(bytes, HUGE).expect("a buffer smaller than isize::MAX")
    }

    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        if len == 0 || std::mem::size_of::<T>() == 0 {
            return HugeBuf { ptr: NonNull::dangling(), len };
        }
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(raw as *mut T) else { std::alloc::handle_alloc_error(layout) };
        // Advise before anything touches the pages (std's zeroing allocation writes the zeros
        // itself at this alignment, which would fault in small pages first).
        #[cfg(target_os = "linux")]
        // SAFETY: the range is this allocation; MADV_HUGEPAGE changes how pages are backed,
        // never their contents.
        unsafe {
            libc::madvise(raw as *mut libc::c_void, layout.size(), libc::MADV_HUGEPAGE);
        }
        // SAFETY: raw holds layout.size() >= len · size_of::<T>() bytes; all-zero is a valid T
        // (Zeroable).
        unsafe { std::ptr::write_bytes(raw, 0, len * std::mem::size_of::<T>()) };
        HugeBuf { ptr, len }
    }
}

impl<T: bytemuck::Zeroable + Copy> std::ops::Deref for HugeBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: ptr holds len initialised (zeroed, then written) elements, or is dangling with
        // len 0 / zero-sized T.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: bytemuck::Zeroable + Copy> std::ops::DerefMut for HugeBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in deref, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: bytemuck::Zeroable + Copy> Drop for HugeBuf<T> {
    fn drop(&mut self) {
        if self.len != 0 && std::mem::size_of::<T>() != 0 {
            // SAFETY: allocated in `zeroed` with this layout.
            unsafe { dealloc(self.ptr.as_ptr() as *mut u8, Self::layout(self.len)) };
        }
    }
}

impl<T: bytemuck::Zeroable + Copy + std::fmt::Debug> std::fmt::Debug for HugeBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HugeBuf({} values)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_zeroed_writable_and_freed() {
        for len in [0usize, 1, 1000, (3 << 20) / 4 + 5] {
            let mut b: HugeBuf<f32> = HugeBuf::zeroed(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0.0));
            if len > 0 {
                assert_eq!(b.as_ptr() as usize % HUGE, 0);
                b[len - 1] = 7.0;
                assert_eq!(b[len - 1], 7.0);
            }
        }
        let u: HugeBuf<u16> = HugeBuf::zeroed(3);
        assert_eq!(&u[..], &[0, 0, 0]);
    }
}
