//! Results as they complete: tasks of uneven length, printed in the order they finish, with
//! `map_as_completed`.
//!
//! cargo run -p ladle --example completed

use ladle::StreamExt;

/// Sleeps for a while (longer for smaller inputs), then returns its input's square.
#[ladle::task]
fn slow_square(x: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_millis(20 * (10 - x)));
    x * x
}

#[ladle::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = ladle::Cluster::from_env().await?;
    let mut results = cluster.map_as_completed(slow_square, 0..10u64);
    let mut sum = 0;
    while let Some((index, result)) = results.next().await {
        let value = result?;
        println!("input {index}: {value}");
        sum += value;
    }
    println!("sum of squares: {sum}");
    Ok(())
}
