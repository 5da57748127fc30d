//! `kube-sim`: serves the in-memory API server on loopback and writes a
//! kubeconfig for kubectl and the operator, with the LWS simulator running.

use clap::Parser;
use kube_sim::lws_sim::{self, LwsSimConfig};
use kube_sim::server::{Sim, router};
use kube_sim::store::Store;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "kube-sim",
    version,
    about = "In-memory Kubernetes API server for tests and local use"
)]
struct Args {
    /// Address to serve on; port 0 picks a free one. Loopback only.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig pointing at this server.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Do not run the LWS simulator (LeaderWorkerSet status then stays as written).
    #[arg(long)]
    no_lws_sim: bool,
    /// How long each simulated LWS group takes to become ready.
    #[arg(long, default_value_t = 0)]
    lws_group_delay_ms: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "error: --listen {}: kube-sim serves on loopback only (no authentication)",
            args.listen
        );
        return std::process::ExitCode::from(2);
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: --listen {}: {e}", args.listen);
            return std::process::ExitCode::from(2);
        }
    };
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    if let Some(path) = &args.kubeconfig {
        // Write to a temporary file and rename, so a reader never sees half a file.
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, kube_sim::kubeconfig(addr))
            .and_then(|()| std::fs::rename(&tmp, path))
        {
            eprintln!("error: --kubeconfig {}: {e}", path.display());
            return std::process::ExitCode::from(2);
        }
    }
    println!("kube-sim serving on http://{addr}");
    let sim = Sim::new(Arc::new(Store::default()));
    if !args.no_lws_sim {
        sim.lws.set(LwsSimConfig {
            group_delay: std::time::Duration::from_millis(args.lws_group_delay_ms),
            unready_fraction: 0.0,
        });
        lws_sim::spawn(sim.store.clone(), sim.lws.clone());
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match axum::serve(listener, router(sim))
        .with_graceful_shutdown(shutdown)
        .await
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: serving: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
