//! The flowgate engine: compiles a Dify DSL into an immutable [`Plan`] and runs it with Dify's
//! semantics, emitting one typed event stream per run.
//!
//! The engine knows nothing about HTTP servers, databases or model providers: it reaches the
//! outside world only through the [`ports`] traits.

pub mod condition;
pub mod decimal;
pub mod event;
mod ids;
pub mod inputs;
pub mod mock;
pub mod nodes;
pub mod plan;
pub mod pool;
pub mod ports;
pub mod pyfmt;
pub mod run;
pub mod stream;
pub mod template;
pub mod value;

use std::sync::Arc;

pub use event::{EventSink, NodeStatus, RunEvent, RunStatus, RunSummary};
pub use inputs::{InputError, PastTurn, RunRequest};
pub use plan::{CompileError, Plan};
pub use ports::Ports;
pub use run::{Limits, RunControl};
pub use value::{File, Map, Value};

/// Runs plans with a fixed set of ports and limits. Cheap to share across requests.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    ports: Ports,
    limits: Limits,
}

impl Engine {
    pub fn new(ports: Ports) -> Self {
        Self { ports, limits: Limits::default() }
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn ports(&self) -> &Ports {
        &self.ports
    }

    /// Validates the inputs (nothing runs, nothing is emitted when they are rejected), then
    /// runs the plan to completion.
    pub async fn run(
        &self,
        plan: &Arc<Plan>,
        request: RunRequest,
        sink: &mut dyn EventSink,
        control: Option<&RunControl>,
    ) -> Result<RunSummary, InputError> {
        let inputs = inputs::prepare_inputs(&plan.start_variables, &request.inputs, None)?;
        Ok(self.run_prepared(plan, inputs, &request, sink, control).await)
    }

    /// Runs with inputs already validated by [`inputs::prepare_inputs`].
    pub async fn run_prepared(
        &self,
        plan: &Arc<Plan>,
        inputs: Map,
        request: &RunRequest,
        sink: &mut dyn EventSink,
        control: Option<&RunControl>,
    ) -> RunSummary {
        let start = inputs::build_start(plan, inputs, request);
        run::execute(plan, &self.ports, self.limits, start, sink, control).await
    }
}
