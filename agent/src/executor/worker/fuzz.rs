//! Fuzz target of the reader of a worker's output: what a task prints is anything at all. 512
//! cases of up to 2 KiB, read through buffers of 1 to 16 bytes (so that lines straddle reads):
//! well under a second in a debug build; `PROPTEST_CASES` runs more.

use ladle_fuzz::{allocated_by, allocation_bound, arbitrary_bytes, config};
use proptest::prelude::*;

use super::next_line;

/// Every line of `bytes` as the agent reads it, with lines cut at `max` bytes.
fn lines(bytes: &[u8], buffer: usize, max: usize) -> std::io::Result<Vec<String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(std::io::Error::other)?;
    runtime.block_on(async {
        let mut reader = tokio::io::BufReader::with_capacity(buffer, bytes);
        let mut lines = Vec::new();
        while let Some(line) = next_line(&mut reader, max).await? {
            lines.push(line);
        }
        Ok(lines)
    })
}

/// Output that looks like output: text, line ends of both kinds, the odd invalid byte.
fn output() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        arbitrary_bytes(2048),
        prop::collection::vec(
            prop_oneof![
                "[a-z ]{0,40}".prop_map(String::into_bytes),
                Just(b"\n".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(vec![0xff]),
                Just("é".as_bytes().to_vec()),
            ],
            0..64,
        )
        .prop_map(|parts| parts.concat()),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn output_reader_never_panics_and_keeps_every_line_within_its_cut(
        bytes in output(),
        buffer in 1..16usize,
        max in 0..64usize,
    ) {
        let (read, allocated) = allocated_by(|| lines(&bytes, buffer, max));
        let read = read.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(allocated <= allocation_bound(bytes.len()), "{allocated} bytes");
        let mut expected: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        if expected.last().is_some_and(|last| last.is_empty()) {
            expected.pop();
        }
        prop_assert_eq!(read.len(), expected.len());
        for (line, raw) in read.iter().zip(expected) {
            if raw.len() <= max {
                let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
                prop_assert_eq!(line, &String::from_utf8_lossy(raw));
            } else {
                let note = format!(
                    " [ladle: {} more bytes of this line dropped; lines are cut at {max} bytes]",
                    raw.len() - max
                );
                prop_assert!(line.ends_with(&note), "{line:?}");
            }
        }
    }
}
