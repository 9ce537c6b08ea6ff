//! The one contract on sizes that every Ladle client and server follows: how large a gRPC
//! message may be, how batches are cut, which values travel inline and which by reference, and
//! how much of a task's output is carried.
//!
//! Every message is cut so that it stays below [`MAX_MESSAGE_BYTES`] whatever the mix of sizes:
//! a batch closes once it holds [`BATCH_BYTES`], and no single item in it is larger than
//! [`INLINE_VALUE_BYTES`] (larger values go through the blob store, in pieces of
//! [`BLOB_PIECE_BYTES`]). The limit is generous next to what is ever sent, so that a peer of a
//! slightly different release never trips it.

/// The largest gRPC message any Ladle client or server encodes or decodes.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// HTTP/2 flow-control windows, per stream and per connection, of every Ladle client and
/// server. HTTP/2's default of 64 KiB makes a big value wait for a window update every 64 KiB:
/// on loopback that held blob transfers to about 0.1 GB/s. What a peer may have in flight on
/// one connection is bounded by the connection's window.
pub const STREAM_WINDOW_BYTES: u32 = 8 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// HTTP/2 keep-alive of every Ladle client and server: a ping after this long without traffic
/// (idle or not)...
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// ...and the connection is dead if its answer takes longer than this. Either side of a stream
/// that went silent (a partitioned network, a frozen host) learns it within
/// [`DEAD_STREAM_WITHIN`]: the driver then opens its session again, the scheduler holds its job
/// for `driver_grace` and keeps its results until acknowledged.
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
pub const DEAD_STREAM_WITHIN: std::time::Duration =
    KEEPALIVE_INTERVAL.saturating_add(KEEPALIVE_TIMEOUT);

/// A batch of tasks, results or output lines closes once it holds this many bytes.
pub const BATCH_BYTES: usize = 4 << 20;

/// A task's argument chunk or result larger than this does not travel inside the streams: it is
/// stored in the scheduler's blob store, by content hash, and fetched once by whoever needs it.
pub const INLINE_VALUE_BYTES: usize = 1 << 20;

/// Blobs travel in pieces of this size.
pub const BLOB_PIECE_BYTES: usize = 1 << 20;

/// Bytes of one line of a task's output that are carried; the rest of the line is cut, with a
/// note of how much.
pub const MAX_OUTPUT_LINE_BYTES: usize = 16 << 10;

/// Lines of output per second that one job's tasks may send from one agent, with a burst of
/// twice as many; lines beyond are dropped, and the driver is told how many.
pub const OUTPUT_LINES_PER_SECOND: u32 = 1000;

/// Bytes of output per second that one job's tasks may send from one agent (burst: twice).
pub const OUTPUT_BYTES_PER_SECOND: u32 = 1 << 20;

/// What every message carries besides its items (ids, tags, lengths): counted per item when
/// batches are cut, so that many tiny items cannot add up past the limit.
pub const ITEM_OVERHEAD_BYTES: usize = 64;

/// Sets [`MAX_MESSAGE_BYTES`] as both limits of a generated tonic client or server, in place of
/// tonic's 4 MiB default.
#[macro_export]
macro_rules! with_message_limits {
    ($service:expr) => {
        $service
            .max_decoding_message_size($crate::limits::MAX_MESSAGE_BYTES)
            .max_encoding_message_size($crate::limits::MAX_MESSAGE_BYTES)
    };
}

/// Cuts `items` into batches of at most [`BATCH_BYTES`] (counting `size` of each item plus
/// [`ITEM_OVERHEAD_BYTES`]) and at most `max_count` items; a batch closes after the item that
/// fills it, so a batch exceeds the byte bound by at most one item.
pub fn batches<T>(items: Vec<T>, max_count: usize, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        bytes += size(&item) + ITEM_OVERHEAD_BYTES;
        batch.push(item);
        if bytes >= BATCH_BYTES || batch.len() >= max_count.max(1) {
            out.push(std::mem::take(&mut batch));
            bytes = 0;
        }
    }
    if !batch.is_empty() {
        out.push(batch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_close_by_bytes_and_by_count_and_lose_nothing() {
        let sizes = [
            10,
            INLINE_VALUE_BYTES,
            3,
            INLINE_VALUE_BYTES,
            INLINE_VALUE_BYTES,
        ];
        let items: Vec<usize> = (0..40).map(|i| sizes[i % sizes.len()]).collect();
        let cut = batches(items.clone(), usize::MAX, |&s| s);
        assert!(cut.len() > 1);
        for batch in &cut {
            let bytes: usize = batch.iter().map(|&s| s + ITEM_OVERHEAD_BYTES).sum();
            assert!(bytes < BATCH_BYTES + INLINE_VALUE_BYTES + ITEM_OVERHEAD_BYTES);
            assert!(bytes + INLINE_VALUE_BYTES < MAX_MESSAGE_BYTES);
        }
        assert_eq!(cut.concat(), items);
        let by_count = batches((0..10).collect::<Vec<_>>(), 3, |_| 1);
        assert_eq!(by_count.len(), 4);
        assert!(batches(Vec::<u8>::new(), 3, |_| 1).is_empty());
    }
}
