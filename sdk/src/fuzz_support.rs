//! What the SDK's fuzz targets share: tasks registered in the test binary, with argument and
//! result types like those of real programs, and the allocator that counts what decoding costs.

use ladle_fuzz::CountingAllocator;
use serde_bytes::ByteBuf;

use crate::{GpuUse, Reducer, Shared, Task, registry::Entry};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// A task of several argument types in one: a string (`"fail"` fails it), numbers, and an
/// optional block of bytes. Its output is a number, so that [`Add`] reduces it.
#[derive(Clone, Copy)]
pub struct Describe;

/// The argument of [`Describe`].
pub type DescribeInput = (String, Vec<u64>, Option<ByteBuf>);

impl Task for Describe {
    type Input = DescribeInput;
    type Output = u64;
    const NAME: &'static str = "fuzz::describe";
    const GPU: GpuUse = GpuUse::None;
    fn run((text, numbers, bytes): Self::Input) -> Result<u64, String> {
        if text == "fail" {
            return Err("asked to fail".into());
        }
        let bytes = bytes.map_or(0, |b| b.len() as u64);
        Ok(numbers
            .iter()
            .fold(text.len() as u64 ^ bytes, |a, &n| a.wrapping_add(n)))
    }
}

/// The reducer of [`Describe`]'s outputs.
#[derive(Clone, Copy)]
pub struct Add;

impl Task for Add {
    type Input = (u64, u64);
    type Output = u64;
    const NAME: &'static str = "fuzz::add";
    const GPU: GpuUse = GpuUse::None;
    fn run((a, b): Self::Input) -> Result<u64, String> {
        Ok(a.wrapping_add(b))
    }
}

impl Reducer for Add {}

/// A task that takes a shared constant: its argument names one by hash.
#[derive(Clone, Copy)]
pub struct SharedLen;

impl Task for SharedLen {
    type Input = (Shared<Vec<u64>>, u32);
    type Output = u64;
    const NAME: &'static str = "fuzz::shared_len";
    const GPU: GpuUse = GpuUse::None;
    fn run((shared, extra): Self::Input) -> Result<u64, String> {
        Ok(shared.len() as u64 + u64::from(extra))
    }
}

inventory::submit! { Entry::task::<Describe>() }
inventory::submit! { Entry::reducer::<Add>() }
inventory::submit! { Entry::task::<SharedLen>() }

/// Valid encodings of chunks of [`Describe`]'s arguments, to damage.
pub fn describe_payloads() -> Vec<Vec<u8>> {
    let chunks: Vec<Vec<DescribeInput>> = vec![
        vec![("abc".into(), vec![1, 2, 300], None)],
        vec![
            ("fail".into(), vec![], Some(ByteBuf::from(vec![9; 20]))),
            ("é".into(), vec![u64::MAX; 3], Some(ByteBuf::new())),
        ],
        vec![],
    ];
    chunks
        .iter()
        .map(|c| postcard::to_allocvec(c).unwrap_or_default())
        .collect()
}
