use clap::{Parser, Subcommand};

/// Kubernetes operator for Huawei Cloud Workspace remote assistance.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
}

fn main() {
    match Cli::parse().command {
        Command::Crd => print!("{}", workspace_assist::crds_yaml()),
    }
}
