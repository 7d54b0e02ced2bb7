//! Learning-rate schedules: linear warm-up, then constant or cosine decay to a floor fraction
//! of the peak (Llama 2 pretrains with cosine to 10%, §2.2). Steps count from 0; step s of a
//! warm-up of W steps uses peak · (s + 1) / W, so the first step already moves the weights.

/// A schedule's shape; the peak learning rate is passed to [`Schedule::lr`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    Constant { warmup_steps: u64 },
    /// Cosine from the peak at the end of warm-up down to `floor · peak` at `total_steps`,
    /// then held there.
    Cosine { warmup_steps: u64, total_steps: u64, floor: f32 },
}

impl Schedule {
    pub fn lr(&self, peak: f32, step: u64) -> f32 {
        let warmup = match *self {
            Schedule::Constant { warmup_steps } | Schedule::Cosine { warmup_steps, .. } => warmup_steps,
        };
        if step < warmup {
            return peak * (step + 1) as f32 / warmup as f32;
        }
        match *self {
            Schedule::Constant { .. } => peak,
            Schedule::Cosine { total_steps, floor, .. } => {
                let span = total_steps.saturating_sub(warmup).max(1);
                let progress = ((step - warmup) as f64 / span as f64).min(1.0);
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                (peak as f64 * (floor as f64 + (1.0 - floor as f64) * cos)) as f32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let s = Schedule::Cosine { warmup_steps: 10, total_steps: 110, floor: 0.1 };
        assert!((s.lr(1.0, 0) - 0.1).abs() < 1e-6);
        assert!((s.lr(1.0, 9) - 1.0).abs() < 1e-6);
        assert!((s.lr(1.0, 10) - 1.0).abs() < 1e-6);
        assert!((s.lr(1.0, 60) - 0.55).abs() < 1e-6, "{}", s.lr(1.0, 60));
        assert!((s.lr(1.0, 110) - 0.1).abs() < 1e-6);
        assert!((s.lr(1.0, 500) - 0.1).abs() < 1e-6);
        let c = Schedule::Constant { warmup_steps: 4 };
        assert_eq!((c.lr(2.0, 1), c.lr(2.0, 100)), (1.0, 2.0));
    }
}
