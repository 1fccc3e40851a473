//! SIGHUP, SIGTERM and SIGINT, turned into lifecycle events on a thread of their own.

use std::io;
use std::sync::mpsc::{SyncSender, TrySendError};

use async_signal::{Signal, Signals};
use smol::stream::StreamExt;

use crate::lifecycle::Event;

/// Takes over the three signals now (so a SIGHUP that arrives before we are ready waits
/// for us instead of killing the process, its default action) and forwards them as events.
pub fn forward(events: SyncSender<Event>) -> io::Result<()> {
    let mut signals = Signals::new([Signal::Hup, Signal::Term, Signal::Int])?;
    std::thread::Builder::new()
        .name("sidegate-signals".into())
        .spawn(move || {
            smol::block_on(async {
                while let Some(signal) = signals.next().await {
                    let event = match signal {
                        Ok(Signal::Hup) => Event::Reload,
                        Ok(_) => Event::Shutdown,
                        Err(e) => {
                            crate::warn!("signal handling failed: {e}");
                            continue;
                        }
                    };
                    match events.try_send(event) {
                        // Full: events are pending already; a second reload or stop
                        // request adds nothing to the one queued.
                        Ok(()) | Err(TrySendError::Full(_)) => {}
                        Err(TrySendError::Disconnected(_)) => return,
                    }
                }
            });
        })?;
    Ok(())
}
