//! The async runtime openraft runs on: tokio, with one change. openraft draws its election
//! timeouts and tick phases from the runtime's thread-local RNG; [`SeedableTokio`] draws them
//! from a per-thread stream that a simulation seeds ([`seed_thread_rng`]), so a run on a
//! current-thread runtime replays exactly. Unseeded (production), every draw comes from the
//! operating system's entropy, as with openraft's own tokio runtime.
//!
//! It must never change what openraft does beyond where its random numbers come from.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::time::Duration;

use openraft::rt::{AsyncRuntime, OptionalSend, Select2, Select3, Select4};
use openraft::TokioRuntime;
use rand_raft::rngs::SmallRng;
use rand_raft::SeedableRng;

thread_local! {
    /// The seeded stream of this thread, if a simulation installed one: the state of a
    /// SplitMix64 generator whose every output seeds one RNG handed to openraft.
    static SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Makes every later draw of openraft on this thread come from a stream seeded with `seed`
/// (`None`: from entropy again). A simulation calls it before it starts its witnesses.
pub fn seed_thread_rng(seed: Option<u64>) {
    SEED.with(|s| s.set(seed));
}

/// A random number from this thread's seeded stream when a simulation installed one (see
/// [`seed_thread_rng`]), from entropy otherwise: for identifiers the replicated state keeps
/// (the cluster id, request ids), which a replayed run must draw the same.
pub fn random_u128() -> u128 {
    use rand_raft::RngExt;
    SeedableTokio::thread_rng().random()
}

/// SplitMix64: a bijective mixer, enough to turn a counter into independent seeds.
fn splitmix64(state: u64) -> u64 {
    let z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Tokio with a seedable thread RNG (see the module doc).
#[derive(Debug)]
pub struct SeedableTokio(TokioRuntime);

impl AsyncRuntime for SeedableTokio {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn select2<A, B>(
        a: A,
        b: B,
    ) -> impl Future<Output = Select2<A::Output, B::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
    {
        TokioRuntime::select2(a, b)
    }

    fn select3<A, B, C>(
        a: A,
        b: B,
        c: C,
    ) -> impl Future<Output = Select3<A::Output, B::Output, C::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
    {
        TokioRuntime::select3(a, b, c)
    }

    fn select4<A, B, C, D>(
        a: A,
        b: B,
        c: C,
        d: D,
    ) -> impl Future<Output = Select4<A::Output, B::Output, C::Output, D::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
        D: Future + OptionalSend,
    {
        TokioRuntime::select4(a, b, c, d)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        match SEED.with(|s| {
            let state = s.get()?;
            let next = splitmix64(state);
            s.set(Some(next));
            Some(next)
        }) {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => rand_raft::make_rng(),
        }
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        SeedableTokio(TokioRuntime::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        TokioRuntime::spawn_blocking(f)
    }
}
