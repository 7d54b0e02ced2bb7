//! alignflow's pipeline graph: the TOML spec and its checker, the plan (loops unrolled into
//! rounds), fingerprints, the content-addressed store, and the runtime on timely/differential
//! dataflow. It defines the stage contract (`stage`) but knows no stage kind and never touches
//! a tensor or an Arrow array: artifacts are directories, rows are (key, hash) pairs and bytes.

pub mod check;
pub mod cluster;
pub mod diag;
pub mod explain;
pub mod fingerprint;
pub mod params;
pub mod plan;
pub mod rows;
pub mod runtime;
pub mod spec;
pub mod stage;
pub mod store;

pub use check::{check, Pipeline, Ref};
pub use cluster::{ClusterConfig, ClusterError, Collective, Solo};
pub use diag::Diagnostic;
pub use explain::{explain, PlanEntry};
pub use params::{ParamSpec, ParamType, ParamValue, Params};
pub use plan::{plan, Plan, PlanError};
pub use runtime::{run, Progress, RunError, RunOptions, RunReport, Silent, StageReport, Status};
pub use stage::{ArtifactType, Port, Registry, Resources, RowFn, RowId, RowStats, RowTask, RunCtx, Stage, StageError};
pub use store::{Store, StoreError};
