//! Progress display for `alignflow run`: indicatif bars (one per running stage, with a row
//! bar for row-wise stages) when stderr is a terminal, plain lines otherwise (logs, CI).
//! Everything goes to stderr so that `run --json` keeps stdout for the JSON object.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use graph::{Progress, StageReport, Status};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// The progress display suited to where stderr goes.
pub fn for_stderr() -> Arc<dyn Progress> {
    if std::io::stderr().is_terminal() {
        Arc::new(Bars { multi: MultiProgress::new(), bars: Mutex::new(HashMap::new()) })
    } else {
        Arc::new(Lines)
    }
}

/// One line per finished stage, e.g. `cached  world  (0.00 s)`.
pub struct Lines;

fn line(r: &StageReport) -> String {
    let rows = match &r.rows {
        Some(s) => format!(", rows {} computed / {} reused / {} total", s.computed, s.reused, s.total),
        None => String::new(),
    };
    let err = r.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default();
    format!("{:<8}{}  ({:.2} s{rows}){err}", r.status.name(), r.name, r.seconds)
}

impl Progress for Lines {
    fn started(&self, instance: &str, kind: &str) {
        eprintln!("start   {instance} ({kind})");
    }
    fn finished(&self, r: &StageReport) {
        eprintln!("{}", line(r));
    }
}

/// indicatif bars.
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Progress for Bars {
    fn started(&self, instance: &str, kind: &str) {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}] {wide_bar} {pos}/{len}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
        bar.set_message(format!("{instance} ({kind})"));
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        self.bars.lock().expect("bars lock").insert(instance.to_string(), bar);
    }
    fn rows(&self, instance: &str, done: u64, total: u64) {
        if let Some(bar) = self.bars.lock().expect("bars lock").get(instance) {
            bar.set_length(total);
            bar.set_position(done);
        }
    }
    fn finished(&self, r: &StageReport) {
        let bar = self.bars.lock().expect("bars lock").remove(&r.name);
        match bar {
            Some(bar) => bar.finish_and_clear(),
            None if r.status == Status::Cached => {}
            None => {}
        }
        let _ = self.multi.println(line(r));
    }
}
