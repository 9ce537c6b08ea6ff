//! What the decoders' property tests share (the "fuzz targets" `cargo test` runs): the inputs
//! they try, how many, and a check that decoding allocates within a bound. A crate of its own,
//! and only ever a dev-dependency: what Ladle ships neither links it nor is built differently
//! for the tests' sake.
//!
//! Random bytes rarely get past a decoder's first check (a magic prefix, a tag, a length), so
//! every decoder is also given damaged copies of valid encodings ([`mutations_of`]): those reach
//! its deeper paths.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use proptest::{prelude::*, sample::Index, test_runner::Config};

/// `cases` cases, or as many as `PROPTEST_CASES` says (to fuzz longer by hand:
/// `PROPTEST_CASES=100000 cargo test -p ladle-common fuzz_tests`).
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        ..Config::default()
    }
}

/// Up to `max` arbitrary bytes.
pub fn arbitrary_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=max)
}

/// Bytes that sit on the edges of lengths, varints and tags: where decoders go wrong.
const EDGE_BYTES: &[u8] = &[0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff];

/// Byte runs worth inserting or writing over a valid encoding: little-endian u32 lengths at
/// the edges (0, 2^31, 2^32 - 1), and a postcard varint claiming 2^64 - 1 elements.
fn edge_runs() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![0, 0, 0, 0]),
        Just(vec![0, 0, 0, 0x80]),
        Just(vec![0xff, 0xff, 0xff, 0x7f]),
        Just(vec![0xff, 0xff, 0xff, 0xff]),
        Just(vec![0xff; 9].into_iter().chain([0x01]).collect()),
        prop::collection::vec(any::<u8>(), 1..=8),
    ]
}

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Overwrite(Index, Vec<u8>),
    Insert(Index, Vec<u8>),
    Remove(Index, usize),
    Truncate(Index),
    /// Copies a piece of the input elsewhere in it (a length or a tag where another was).
    Duplicate(Index, usize, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let edge = prop::sample::select(EDGE_BYTES);
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        (any::<Index>(), prop_oneof![edge, any::<u8>()])
            .prop_map(|(at, b)| Mutation::SetByte(at, b)),
        (any::<Index>(), edge_runs()).prop_map(|(at, run)| Mutation::Overwrite(at, run)),
        (any::<Index>(), edge_runs()).prop_map(|(at, run)| Mutation::Insert(at, run)),
        (any::<Index>(), 1..16usize).prop_map(|(at, n)| Mutation::Remove(at, n)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1..16usize, any::<Index>())
            .prop_map(|(from, n, to)| Mutation::Duplicate(from, n, to)),
    ]
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        // An index into `bytes` (0 for an empty one), or one past its end where that makes sense.
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
        let len = bytes.len();
        match self {
            Self::FlipBit(i, bit) if len > 0 => bytes[at(i, len)] ^= 1 << bit,
            Self::SetByte(i, b) if len > 0 => bytes[at(i, len)] = *b,
            Self::Overwrite(i, run) => {
                let start = at(i, len);
                for (offset, b) in run.iter().enumerate() {
                    match bytes.get_mut(start + offset) {
                        Some(slot) => *slot = *b,
                        None => bytes.push(*b),
                    }
                }
            }
            Self::Insert(i, run) => {
                let start = at(i, len + 1);
                bytes.splice(start..start, run.iter().copied());
            }
            Self::Remove(i, n) if len > 0 => {
                let start = at(i, len);
                bytes.drain(start..(start + n).min(len));
            }
            Self::Truncate(i) => bytes.truncate(at(i, len + 1)),
            Self::Duplicate(from, n, to) if len > 0 => {
                let start = at(from, len);
                let piece = bytes[start..(start + n).min(len)].to_vec();
                let to = at(to, len + 1);
                bytes.splice(to..to, piece);
            }
            _ => {}
        }
    }
}

/// `valid`, damaged by one to four mutations: bit flips, bytes and runs of bytes at the edges
/// of lengths and varints written over it or inserted, pieces removed or repeated, a cut.
pub fn mutations_of(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(mutation(), 1..=4).prop_map(move |mutations| {
        let mut bytes = valid.clone();
        for m in &mutations {
            m.apply(&mut bytes);
        }
        bytes
    })
}

/// One of `valid` (it must not be empty), damaged as by [`mutations_of`].
pub fn mutations_of_any(valid: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(valid).prop_flat_map(mutations_of)
}

/// What a decoder may allocate for `input_len` bytes of input: 64 bytes for each (room for
/// every element it could decode from them, several times over), and 8 MiB more, twice what
/// any reader sets aside on a length's word before the bytes come (serde up to 1 MiB for a
/// sequence, the frame readers 1 MiB, a blob fetch 4 MiB). The fuzz inputs are small, so the
/// fixed part is what the property checks: no length read from the input is believed beyond it.
pub fn allocation_bound(input_len: usize) -> usize {
    const PER_INPUT_BYTE: usize = 64;
    const FIXED: usize = 8 << 20;
    input_len
        .saturating_mul(PER_INPUT_BYTE)
        .saturating_add(FIXED)
}

/// A global allocator that counts what each thread allocates, for [`allocated_by`]. A test
/// binary installs it with
/// `#[global_allocator] static ALLOCATOR: CountingAllocator = CountingAllocator;`.
pub struct CountingAllocator;

thread_local! {
    // Const-initialised and without a destructor: safe to touch from inside the allocator.
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    let _ = ALLOCATED.try_with(|a| a.set(a.get().saturating_add(bytes)));
}

fn allocated() -> usize {
    ALLOCATED.try_with(Cell::get).unwrap_or(0)
}

// SAFETY: every call is passed on to the system allocator unchanged; counting only adds.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size.saturating_sub(layout.size()));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// `f`'s value, and the bytes it allocated on this thread: frees are not subtracted, so this is
/// at least its peak. Panics unless [`CountingAllocator`] is the global allocator (a check that
/// cannot see allocations would pass for nothing).
pub fn allocated_by<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let probe = allocated();
    drop(std::hint::black_box(Vec::<u8>::with_capacity(16)));
    assert!(
        allocated() > probe,
        "allocated_by needs CountingAllocator as the test binary's global allocator"
    );
    let before = allocated();
    let value = f();
    (value, allocated().saturating_sub(before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOCATOR: CountingAllocator = CountingAllocator;

    #[test]
    fn allocations_are_counted_on_this_thread() {
        let ((), bytes) = allocated_by(|| drop(std::hint::black_box(vec![0u8; 1 << 20])));
        assert!(bytes >= 1 << 20, "{bytes}");
        let ((), none) = allocated_by(|| ());
        assert_eq!(none, 0);
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn mutations_never_panic_and_stay_small(
            damaged in mutations_of((0..64u8).collect()),
        ) {
            prop_assert!(damaged.len() <= 64 + 4 * 16);
        }
    }
}
