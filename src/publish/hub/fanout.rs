//! The hub's stream fan-out: subscribers with bounded queues that lose their oldest event when
//! full (counted), so the publisher never waits for a browser.

use super::*;

/// One event for stream subscribers: an SSE event name and its JSON data.
#[derive(Debug, Clone, PartialEq)]
pub struct HubEvent {
    pub name: &'static str,
    pub data: Arc<str>,
}

pub(super) struct Subscriber {
    pub(super) id: u64,
    pub(super) tx: Sender<HubEvent>,
    /// The hub's own end of the queue, used only to throw the oldest event away when it is full.
    pub(super) oldest: Receiver<HubEvent>,
    pub(super) dropped: Arc<AtomicU64>,
}
impl DisplayHub {
    /// Registers a stream subscriber, unless `limit` are already registered. Its queue starts
    /// with a `snapshot` event (the latest estimate and its age, so a page that connects late
    /// can tell an old number from a live one) and the latest `frame` event.
    pub fn subscribe(self: &Arc<Self>, limit: usize) -> Result<Subscription, SubscriberLimit> {
        let (tx, rx) = crossbeam_channel::bounded(self.config.subscriber_queue.max(3));
        let mut state = lock(&self.state);
        if state.subscribers.len() >= limit {
            self.counters.sse_rejected.fetch_add(1, Ordering::Relaxed);
            return Err(SubscriberLimit { limit });
        }
        let id = state.next_subscriber;
        state.next_subscriber += 1;
        // The queue is new and holds at least three events, so these cannot fail.
        if let Some(latest) = &state.latest {
            let age_ms = latest.received.elapsed().as_secs_f64() * 1000.0;
            let data = format!("{{\"age_ms\":{age_ms:.1},\"estimate\":{}}}", latest.json);
            let _ = tx.try_send(HubEvent {
                name: "snapshot",
                data: data.into(),
            });
        }
        if let Some(frame) = &state.frame {
            let _ = tx.try_send(HubEvent {
                name: "frame",
                data: frame.meta.clone(),
            });
        }
        if !state.faults.is_empty() {
            let _ = tx.try_send(faults_event(&state));
        }
        let dropped = Arc::new(AtomicU64::new(0));
        state.subscribers.push(Subscriber {
            id,
            tx,
            oldest: rx.clone(),
            dropped: dropped.clone(),
        });
        Ok(Subscription {
            hub: Arc::clone(self),
            id,
            rx,
            dropped,
        })
    }

    pub fn subscriber_count(&self) -> usize {
        lock(&self.state).subscribers.len()
    }

    /// Events thrown away because a subscriber's queue was full, over all subscribers.
    pub fn dropped_events(&self) -> u64 {
        self.counters.sse_dropped.load(Ordering::Relaxed)
    }

    /// Offers `event` to every subscriber without waiting: a full queue loses its oldest event.
    pub(super) fn fan_out(&self, state: &mut State, event: HubEvent) {
        let mut dropped_total = 0;
        state
            .subscribers
            .retain(|sub| match sub.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(event)) => {
                    // Only the hub sends, and it holds the lock, so once the oldest is out there is
                    // room; a subscriber that read in the meantime only makes more room.
                    let made_room = sub.oldest.try_recv().is_ok();
                    let delivered = sub.tx.try_send(event).is_ok();
                    let lost = u64::from(made_room) + u64::from(!delivered);
                    sub.dropped.fetch_add(lost, Ordering::Relaxed);
                    dropped_total += lost;
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
        if dropped_total > 0 {
            self.counters
                .sse_dropped
                .fetch_add(dropped_total, Ordering::Relaxed);
        }
    }

    pub(super) fn unsubscribe(&self, id: u64) {
        lock(&self.state).subscribers.retain(|s| s.id != id);
    }
}

/// A stream subscriber's end of its queue. Dropping it unregisters the subscriber, which is how
/// a disconnected client leaves the hub.
pub struct Subscription {
    hub: Arc<DisplayHub>,
    id: u64,
    rx: Receiver<HubEvent>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next event, waiting at most `timeout`; `None` when none came.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<HubEvent> {
        self.rx.recv_timeout(timeout).ok()
    }

    pub fn try_recv(&self) -> Option<HubEvent> {
        self.rx.try_recv().ok()
    }

    /// Events this subscriber lost because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.id);
    }
}

/// The open faults as the page's `faults` event: `{"faults":["key: reason",...]}` (empty when
/// the last one cleared).
pub(super) fn faults_event(state: &State) -> HubEvent {
    let list: Vec<String> = state
        .faults
        .iter()
        .map(|(k, r)| format!("{k}: {r}"))
        .collect();
    HubEvent {
        name: "faults",
        data: serde_json::json!({ "faults": list }).to_string().into(),
    }
}
