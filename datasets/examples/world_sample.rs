//! Prints a few rows of every split of the standard world and how long generating the whole
//! world took: `cargo run --release -p datasets --example world_sample [SEED]`. Used to write
//! the examples in docs/datasets.md and to measure generation speed (a benchmark, not a test).

use std::time::Instant;

use datasets::judge::{canonical_answer, judge_inputs};
use datasets::table::{messages_values, str_values};
use datasets::world::{Split, WorldConfig, generate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seed = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let cfg = WorldConfig::standard(seed);
    let start = Instant::now();
    let world = generate(&cfg)?;
    let elapsed = start.elapsed();
    for split in Split::ALL {
        let t = world.table(split);
        println!("== {} ({} rows)", split.as_str(), t.num_rows());
        match split {
            Split::Pretrain => {
                let kinds = str_values(t, "kind", "pretrain")?;
                let texts = str_values(t, "text", "pretrain")?;
                for i in 0..3 {
                    println!("[{}]\n{}", kinds[i], texts[i]);
                }
            }
            Split::Sft => {
                let convs = messages_values(t, "messages", "sft")?;
                let quals = str_values(t, "quality", "sft")?;
                for i in 0..8 {
                    println!("{:<18} {:?} -> {:?}", quals[i], convs[i][0].content, convs[i][1].content);
                }
            }
            _ => {
                let prompts = str_values(t, "prompt", split.as_str())?;
                let judges = str_values(t, "judge", split.as_str())?;
                let inputs = judge_inputs(t, split.as_str())?;
                for i in 0..8.min(t.num_rows()) {
                    println!("{:?}\n    judge {}\n    good  {:?}", prompts[i], judges[i], canonical_answer(&inputs[i].spec));
                }
            }
        }
    }
    let words: usize = str_values(&world.pretrain, "text", "pretrain")?.iter().map(|t| t.split_whitespace().count()).sum();
    println!("pretrain words: {words}");
    println!("generated the standard world in {:.3} s", elapsed.as_secs_f64());
    Ok(())
}
