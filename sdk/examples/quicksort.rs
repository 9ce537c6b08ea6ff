//! A parallel quicksort with nested futures: each task splits its slice around a pivot, submits
//! the two halves as tasks of their own and waits for them. The recursion goes deeper than the
//! cluster has slots: a task waiting for its halves gives its slot back meanwhile.
//!
//! cargo run --release -p ladle --example quicksort [-- NUMBERS]

/// Below this many numbers a task sorts by itself.
const ALONE: usize = 20_000;

#[ladle::task]
fn sort(numbers: Vec<u64>) -> Result<Vec<u64>, Box<dyn std::error::Error + Send + Sync>> {
    if numbers.len() <= ALONE {
        let mut numbers = numbers;
        numbers.sort_unstable();
        return Ok(numbers);
    }
    // The median of three as the pivot; the numbers equal to it stay here.
    let (first, middle, last) = (
        numbers[0],
        numbers[numbers.len() / 2],
        numbers[numbers.len() - 1],
    );
    let pivot = first.max(middle.min(last)).min(middle.max(last));
    let mut below = Vec::new();
    let mut equal = Vec::new();
    let mut above = Vec::new();
    for n in numbers {
        match n.cmp(&pivot) {
            std::cmp::Ordering::Less => below.push(n),
            std::cmp::Ordering::Equal => equal.push(n),
            std::cmp::Ordering::Greater => above.push(n),
        }
    }
    // The halves run as tasks of this job, anywhere in the cluster.
    let cluster = ladle::cluster()?;
    let below = cluster.submit(sort, below)?;
    let above = cluster.submit(sort, above)?;
    let (below, above) = ladle::block_on(async { (below.await, above.await) });
    let mut sorted = below?;
    sorted.extend(equal);
    sorted.extend(above?);
    Ok(sorted)
}

#[ladle::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 1_000_000,
    };
    // Deterministic numbers (xorshift), so every run sorts the same input.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let numbers: Vec<u64> = (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % 1_000_000_000
        })
        .collect();
    let cluster = ladle::Cluster::from_env().await?;
    let started = std::time::Instant::now();
    let sorted = cluster.submit(sort, numbers.clone())?.await?;
    let took = started.elapsed();
    let mut expected = numbers;
    expected.sort_unstable();
    assert_eq!(
        sorted, expected,
        "the cluster's sort differs from the local one"
    );
    println!(
        "sorted {count} numbers: first {}, last {}",
        sorted.first().copied().unwrap_or_default(),
        sorted.last().copied().unwrap_or_default()
    );
    eprintln!("in {:.2}s on {} slots", took.as_secs_f64(), cluster.slots());
    Ok(())
}
