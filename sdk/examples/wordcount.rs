//! Counts words over text files with `map_reduce`: each task counts one file, and the counts
//! are merged on the agents. With no files named, counts a short text of its own.
//!
//! cargo run -p ladle --example wordcount -- FILE...

use std::collections::BTreeMap;

type Counts = BTreeMap<String, u64>;

#[ladle::task]
fn count_words(text: String) -> Counts {
    let mut counts = Counts::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_default() += 1;
    }
    counts
}

#[ladle::task]
fn merge(mut a: Counts, b: Counts) -> Counts {
    for (word, n) in b {
        *a.entry(word).or_default() += n;
    }
    a
}

const SAMPLE: &[&str] = &[
    "the quick brown fox jumps over the lazy dog",
    "the dog barks and the fox runs",
    "a lazy afternoon for the brown dog",
];

#[ladle::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files: Vec<String> = std::env::args().skip(1).collect();
    let texts: Vec<String> = if files.is_empty() {
        SAMPLE.iter().map(|s| (*s).to_owned()).collect()
    } else {
        files
            .iter()
            .map(|f| std::fs::read_to_string(f).map_err(|e| format!("cannot read {f}: {e}")))
            .collect::<Result<_, _>>()?
    };
    let cluster = ladle::Cluster::from_env().await?;
    let counts = cluster.map_reduce(count_words, merge, texts).await?;
    let mut top: Vec<(&String, &u64)> = counts.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (word, n) in top.iter().take(10) {
        println!("{n:>8} {word}");
    }
    println!(
        "{} distinct words, {} in all",
        counts.len(),
        counts.values().sum::<u64>()
    );
    Ok(())
}
