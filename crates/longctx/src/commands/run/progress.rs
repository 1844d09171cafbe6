//! What a run shows while it works.

use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// What a run shows while it works: a bar for the whole plan and one for the current cell
/// (model × method × task). Both advance by each sample's estimated cost, so their ETAs
/// weigh long and short samples alike. Without a terminal the bars stay hidden and every
/// sample is a line with the plan's ETA instead.
pub(super) struct Progress {
    bars: MultiProgress,
    plan: ProgressBar,
    cell: ProgressBar,
    pub(super) started: Instant,
    samples: usize,
    done: usize,
    cost_done: u64,
    cost_total: u64,
}

impl Progress {
    pub(super) fn new(samples: usize, cost_total: u64) -> Self {
        let bars = MultiProgress::new();
        let style = |template: &str| {
            ProgressStyle::with_template(template)
                .expect("a valid progress template")
                .progress_chars("=> ")
        };
        let plan = bars.add(ProgressBar::new(cost_total).with_style(style(
            "plan [{bar:30.cyan/blue}] {msg} {elapsed_precise}, ETA {eta_precise}",
        )));
        let cell = bars.add(
            ProgressBar::new(0)
                .with_style(style("cell [{bar:30.green/white}] ETA {eta_precise} {msg}")),
        );
        plan.set_message(format!("0/{samples} samples"));
        Self {
            bars,
            plan,
            cell,
            started: Instant::now(),
            samples,
            done: 0,
            cost_done: 0,
            cost_total,
        }
    }

    /// A new cell begins: its label and the estimated cost of its samples still to run.
    pub(super) fn start_cell(&self, label: String, cost: u64) {
        self.cell.reset();
        self.cell.set_length(cost);
        self.cell.set_message(label);
    }

    /// One sample finished: advance both bars and show its result line.
    pub(super) fn finish_sample(&mut self, cost: u64, line: String) {
        self.done += 1;
        self.cost_done += cost;
        self.plan.inc(cost);
        self.cell.inc(cost);
        self.plan
            .set_message(format!("{}/{} samples", self.done, self.samples));
        if self.bars.is_hidden() {
            let elapsed = self.started.elapsed().as_secs_f64();
            let left = (self.cost_total - self.cost_done) as f64 / self.cost_done.max(1) as f64;
            eprintln!(
                "[{}/{} {elapsed:.0}s, ETA {:.0}s] {line}",
                self.done,
                self.samples,
                elapsed * left
            );
        } else {
            let _ = self.bars.println(line);
        }
    }

    pub(super) fn finish(&self) {
        self.cell.finish_and_clear();
        self.plan.finish_and_clear();
    }
}
