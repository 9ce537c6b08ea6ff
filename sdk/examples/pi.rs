//! Estimates π by Monte Carlo with `map_reduce`: each task throws darts with its own seed and
//! counts those inside the quarter circle; the counts are summed on the agents, then here.
//!
//! cargo run --release -p ladle --example pi [-- SAMPLES]

#[ladle::task]
fn darts(seed: u64) -> u64 {
    const PER_TASK: u64 = 1_000_000;
    // A small xorshift generator: deterministic per seed, so every run gives the same estimate.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut inside = 0;
    for _ in 0..PER_TASK {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let x = (state >> 32) as f64 / u32::MAX as f64;
        let y = (state & 0xFFFF_FFFF) as f64 / u32::MAX as f64;
        if x * x + y * y <= 1.0 {
            inside += 1;
        }
    }
    inside
}

#[ladle::task]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[ladle::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tasks: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 64,
    };
    let cluster = ladle::Cluster::from_env().await?;
    let started = std::time::Instant::now();
    let inside = cluster.map_reduce(darts, add, 0..tasks).await?;
    let pi = 4.0 * inside as f64 / (tasks * 1_000_000) as f64;
    println!(
        "pi ≈ {pi:.6} from {} darts ({inside} inside)",
        tasks * 1_000_000
    );
    let plural = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    eprintln!(
        "{} on {} ({}) in {:.2}s",
        plural(tasks, "task"),
        plural(u64::from(cluster.agents()), "agent"),
        plural(u64::from(cluster.slots()), "slot"),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
