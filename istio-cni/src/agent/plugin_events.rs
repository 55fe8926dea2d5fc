//! The CNI plugin's reports of new pods' network namespaces, read on tasks of their own:
//! a plugin connection that sends nothing costs only its own task, for at most
//! [`READ_TIMEOUT`], and never holds up the agent.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::plugin::PluginEvent;

/// How long the plugin may take to send its event.
pub(super) const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest event accepted (an event is a few hundred bytes of JSON).
const MAX_EVENT: u64 = 16 * 1024;
/// Plugin connections being read at once; more wait in the listen queue.
const MAX_CONCURRENT: usize = 64;

/// Accepts plugin connections and passes each well-formed event to `events`.
pub(super) async fn accept(listener: UnixListener, events: mpsc::Sender<PluginEvent>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "CNI plugin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let events = events.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(event) = read_event(stream).await {
                let _ = events.send(event).await;
            }
        });
    }
}

/// Reads one event line and answers `ok` (or why not).
async fn read_event(stream: UnixStream) -> Option<PluginEvent> {
    let mut reader = BufReader::new(stream.take(MAX_EVENT));
    let mut line = String::new();
    let read = tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await;
    let parsed = match read {
        Ok(Ok(_)) if !line.ends_with('\n') => Err(format!(
            "no complete line (at most {MAX_EVENT} bytes, newline-terminated)"
        )),
        Ok(Ok(_)) => serde_json::from_str::<PluginEvent>(line.trim()).map_err(|e| e.to_string()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("nothing within {READ_TIMEOUT:?}")),
    };
    let answer = match &parsed {
        Ok(_) => "ok\n".to_string(),
        Err(err) => format!("bad event: {err}\n"),
    };
    let mut stream = reader.into_inner().into_inner();
    let _ = tokio::time::timeout(READ_TIMEOUT, stream.write_all(answer.as_bytes())).await;
    parsed
        .map_err(|err| tracing::warn!(error = %err, "bad CNI plugin event"))
        .ok()
}
