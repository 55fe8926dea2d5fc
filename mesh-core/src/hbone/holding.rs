//! A task that keeps values alive while its future runs, for the tasks HBONE spawns per
//! tunnel and per connection.
//!
//! `tokio::spawn(async move { let _held = held; future.await })` stores `future` twice:
//! once as the block's capture and once as the value being awaited, for as long as the task
//! lives (a tunnel's task measured 3,072 bytes instead of about 1,600).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    /// `future`, holding `held` until it completes or is dropped.
    pub(crate) struct Holding<F, H> {
        #[pin]
        future: F,
        held: H,
    }
}

impl<F, H> Holding<F, H> {
    pub(crate) fn new(future: F, held: H) -> Self {
        Holding { future, held }
    }
}

impl<F: Future, H> Future for Holding<F, H> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().future.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn work() {
        let buffer = [0u8; 1024];
        tokio::task::yield_now().await;
        std::hint::black_box(&buffer);
    }

    #[test]
    fn holds_the_future_once() {
        let alone = std::mem::size_of_val(&work());
        let held = std::sync::Arc::new(());
        let holding = Holding::new(work(), held.clone());
        assert!(std::mem::size_of_val(&holding) <= alone + 16);
        // The shape it replaces holds the future twice.
        let future = work();
        let block = async move {
            let _held = held;
            future.await
        };
        assert!(std::mem::size_of_val(&block) >= 2 * alone);
    }

    #[tokio::test]
    async fn drops_what_it_holds_when_done() {
        let held = std::sync::Arc::new(());
        Holding::new(work(), held.clone()).await;
        assert_eq!(std::sync::Arc::strong_count(&held), 1);
    }
}
