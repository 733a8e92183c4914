//! One module per subcommand.

pub mod attach;
pub mod demo;
pub mod generate;
pub mod report;
pub mod run;
pub mod watch;
pub mod workload;
