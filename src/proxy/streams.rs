//! An HTTP/2 connection's streams, run by the connection's own task.
//!
//! hyper hands each HTTP/2 stream to an executor. tokio's would make every
//! stream a task of its own: spawned, scheduled, woken and freed once per
//! request, each response handed from the stream's task to the
//! connection's, which must then be woken to write it. Here the
//! connection's task polls its streams itself, just before it polls the
//! connection, so what the streams finished in one pass goes out in that
//! pass's write, and a stream opened by a pass sends its request to the
//! backend in the same pass. (nginx serves a connection's streams from one
//! event loop the same way.)
//!
//! The streams of one connection then share its task's turn and its coop
//! budget, which is fair between connections, as the worker runs one task
//! per connection either way. A graceful close (GOAWAY, a drain) ends
//! hyper's connection only once its streams have answered. A stream still
//! in flight when the connection fails is polled until it ends, within
//! `drain_timeout`, before the connection's task returns: with the
//! connection gone, hyper cancels it at its next poll, as it would a
//! spawned one. (A panic in a stream would take its siblings with it, but
//! a release build aborts on panic anyway.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crossbeam_queue::SegQueue;
use futures_util::stream::{FuturesUnordered, StreamExt};

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor hyper is given: it queues each new stream for the
/// connection's task. A queue rather than the set itself because hyper
/// calls it from inside the connection's poll, while the set is borrowed;
/// a lock-free one because the connection's future must be `Send` (the
/// worker spawns it with `tokio::spawn`), though only one thread ever
/// touches it.
#[derive(Clone, Default)]
pub struct Spawner(Arc<SegQueue<Stream>>);

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        self.0.push(Box::pin(stream));
    }
}

/// A connection's streams, polled by its task.
#[derive(Default)]
pub struct Streams {
    spawner: Spawner,
    running: FuturesUnordered<Stream>,
}

impl Streams {
    /// The executor to give hyper for this connection.
    pub fn spawner(&self) -> Spawner {
        self.spawner.clone()
    }

    /// Polls the streams, then the connection, then any streams the
    /// connection just opened.
    pub fn poll_with<C: Future>(
        &mut self,
        conn: Pin<&mut C>,
        cx: &mut Context<'_>,
    ) -> Poll<C::Output> {
        self.poll_streams(cx);
        let done = conn.poll(cx);
        if done.is_pending() && !self.spawner.0.is_empty() {
            // What these answer at once (a 404, a refusal) woke this task:
            // the next pass writes it.
            self.poll_streams(cx);
        }
        done
    }

    /// Polls the streams still in flight until every one has ended.
    pub async fn finish(&mut self) {
        std::future::poll_fn(|cx| {
            self.poll_streams(cx);
            if self.running.is_empty() && self.spawner.0.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    fn poll_streams(&mut self, cx: &mut Context<'_>) {
        // A stream may hand hyper's executor a task of its own while it is
        // polled (a CONNECT's tunnel): the queue is looked at again until
        // it stays empty, within a bound, past which the task yields and
        // comes back.
        for _ in 0..16 {
            while let Some(stream) = self.spawner.0.pop() {
                self.running.push(stream);
            }
            // Ready(Some) for each stream that ended; Pending once none is
            // ready (the set then wakes this task when one is);
            // Ready(None) when none is left.
            while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {}
            if self.spawner.0.is_empty() {
                return;
            }
        }
        cx.waker().wake_by_ref();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// A connection stand-in that opens one stream per poll, for `opens`
    /// polls, then ends.
    struct Opener {
        spawner: Spawner,
        opens: usize,
        polled: Arc<AtomicUsize>,
    }

    impl Future for Opener {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.opens == 0 {
                return Poll::Ready(());
            }
            self.opens -= 1;
            let polled = self.polled.clone();
            self.spawner.execute(async move {
                polled.fetch_add(1, Relaxed);
                tokio::task::yield_now().await;
                polled.fetch_add(1, Relaxed);
            });
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_new_stream_is_polled_in_the_pass_that_opened_it_and_finished_after_the_connection() {
        let mut streams = Streams::default();
        let polled = Arc::new(AtomicUsize::new(0));
        let mut conn = Opener {
            spawner: streams.spawner(),
            opens: 1,
            polled: polled.clone(),
        };
        let mut conn = Pin::new(&mut conn);
        let first =
            std::future::poll_fn(|cx| Poll::Ready(streams.poll_with(conn.as_mut(), cx))).await;
        assert!(first.is_pending());
        assert_eq!(
            polled.load(Relaxed),
            1,
            "the stream's first poll came in the same pass"
        );
        std::future::poll_fn(|cx| streams.poll_with(conn.as_mut(), cx)).await;
        streams.finish().await;
        assert_eq!(polled.load(Relaxed), 2, "the stream ran to its end");
        assert!(streams.running.is_empty());
    }

    /// A connection stand-in that opens one stream, whose first poll hands
    /// the executor a task of its own (as hyper does with a CONNECT's
    /// tunnel), and does not wake itself.
    struct Nesting {
        spawner: Spawner,
        opened: bool,
        polled: Arc<AtomicUsize>,
    }

    impl Future for Nesting {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            if !self.opened {
                self.opened = true;
                let (spawner, polled) = (self.spawner.clone(), self.polled.clone());
                self.spawner.execute(async move {
                    let polled = polled.clone();
                    spawner.execute(async move {
                        polled.fetch_add(1, Relaxed);
                    });
                });
            }
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_task_queued_by_a_stream_is_polled_in_the_same_pass() {
        let mut streams = Streams::default();
        let polled = Arc::new(AtomicUsize::new(0));
        let mut conn = Nesting {
            spawner: streams.spawner(),
            opened: false,
            polled: polled.clone(),
        };
        let mut conn = Pin::new(&mut conn);
        let pass =
            std::future::poll_fn(|cx| Poll::Ready(streams.poll_with(conn.as_mut(), cx))).await;
        assert!(pass.is_pending());
        assert_eq!(
            polled.load(Relaxed),
            1,
            "nothing would wake the connection for it later"
        );
        assert!(streams.running.is_empty() && streams.spawner.0.is_empty());
    }

    #[tokio::test]
    async fn many_streams_all_finish() {
        let mut streams = Streams::default();
        let polled = Arc::new(AtomicUsize::new(0));
        let mut conn = Opener {
            spawner: streams.spawner(),
            opens: 100,
            polled: polled.clone(),
        };
        let mut conn = Pin::new(&mut conn);
        std::future::poll_fn(|cx| streams.poll_with(conn.as_mut(), cx)).await;
        streams.finish().await;
        assert_eq!(polled.load(Relaxed), 200);
    }
}
