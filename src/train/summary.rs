//! What a run reports when it returns: steps, time, and the accuracy of the
//! reported architectures on validation and test data.

use crate::train::eval::EvalResult;
use std::path::PathBuf;

/// The architectures a run reports at every epoch's end and at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    /// A supernet run's largest subnet.
    Largest,
    /// A supernet run's smallest subnet.
    Smallest,
    /// A standalone run's one model.
    Model,
}

impl Reported {
    /// The name used in metrics.jsonl keys (`val_largest`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Reported::Largest => "largest",
            Reported::Smallest => "smallest",
            Reported::Model => "model",
        }
    }
}

/// The data split an accuracy was measured on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalSplit {
    Val,
    Test,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Summary {
    pub run_dir: PathBuf,
    pub steps: usize,
    pub total_steps: usize,
    pub skipped_steps: usize,
    pub wall_s: f64,
    /// Stopped by a signal before the end (a checkpoint was written).
    pub interrupted: bool,
    /// Supernet runs: the largest and smallest subnets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_largest: Option<EvalResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_smallest: Option<EvalResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_largest: Option<EvalResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_smallest: Option<EvalResult>,
    /// Standalone runs: the one model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_model: Option<EvalResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_model: Option<EvalResult>,
    /// Why a finished run has no test results (the test split is missing
    /// or unusable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_error: Option<String>,
    /// Runs on several ranks (`mpirun`): the ranks and the gradient
    /// all-reduce's share of the time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_parallel: Option<DataParallelReport>,
}

/// What a data-parallel run measured on its rank (rank 0's is reported).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DataParallelReport {
    pub world_size: usize,
    /// Seconds in the step's all-reduce (packing, the sum, the mean).
    pub allreduce_s: f64,
    /// All-reduce calls (one per step: every gradient group and the
    /// losses together).
    pub allreduces: usize,
    /// Steps this invocation ran.
    pub steps: usize,
}

impl Summary {
    /// An empty summary of the run in `run_dir`.
    pub fn new(run_dir: PathBuf) -> Self {
        Summary {
            run_dir,
            steps: 0,
            total_steps: 0,
            skipped_steps: 0,
            wall_s: 0.0,
            interrupted: false,
            val_largest: None,
            val_smallest: None,
            test_largest: None,
            test_smallest: None,
            val_model: None,
            test_model: None,
            test_error: None,
            data_parallel: None,
        }
    }

    /// Records the accuracy of `which` on `split`.
    pub fn set(&mut self, split: EvalSplit, which: Reported, r: EvalResult) {
        let slot = match (split, which) {
            (EvalSplit::Val, Reported::Largest) => &mut self.val_largest,
            (EvalSplit::Val, Reported::Smallest) => &mut self.val_smallest,
            (EvalSplit::Val, Reported::Model) => &mut self.val_model,
            (EvalSplit::Test, Reported::Largest) => &mut self.test_largest,
            (EvalSplit::Test, Reported::Smallest) => &mut self.test_smallest,
            (EvalSplit::Test, Reported::Model) => &mut self.test_model,
        };
        *slot = Some(r);
    }
}
