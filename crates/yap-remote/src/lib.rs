//! External chat engines.
//!
//! - [`remote::RemoteEngine`]: any OpenAI-compatible server(s) (vLLM, SGLang, TensorRT-LLM's
//!   trtllm-serve, llama.cpp's llama-server, another Yap), as replicas with sticky routing.
//! - [`launch`]: derives the command line of a launched vLLM / trtllm-serve from Yap's settings.
//! - [`fit`]: checks that weights and KV cache fit a GPU before launching.
//! - [`supervise`]: runs a launched engine as a child, restarts it, stops it; [`guard`]: the
//!   process between Yap and the engine that dies with Yap and takes the engine's processes
//!   along; [`procs`]: `/proc` walks that prove nothing is left.

pub mod args;
pub mod fit;
pub mod guard;
pub mod launch;
pub mod procs;
pub mod remote;
pub mod supervise;

pub use remote::{EngineFlavor, RemoteConfig, RemoteEngine};
