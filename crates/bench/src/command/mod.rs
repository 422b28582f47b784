//! One module per subcommand of `dotkv-bench`.

pub mod hello;
pub mod replication;
pub mod run;
pub mod single_node;
pub mod suite;
