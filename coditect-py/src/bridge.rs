//! The bridge between tokio and one asyncio event loop.
//!
//! Three things cross it:
//!
//! - **Rust futures awaited from Python** ([`Awaitable`]). The future is polled
//!   on the loop's thread, inside the awaiting coroutine, with the tokio
//!   runtime entered. A future that finishes in its first poll (a direct call
//!   to an idle agent, say) costs no task switch, no thread hop and no loop
//!   iteration. One that waits hands the loop an `asyncio.Future` that its
//!   waker resolves.
//! - **Python coroutines run by Rust** ([`drive`]): handlers and tools. Polled
//!   on the loop's thread, the coroutine is stepped inline, as an `await`
//!   would; polled from a tokio thread, it becomes an `asyncio.Task` on the
//!   loop (the loop captured when the runtime started), and the
//!   Rust side waits on a channel without the GIL.
//! - **Wake-ups from other threads.** No tokio thread ever takes the GIL to
//!   wake Python: it queues the wake-up and writes one byte to a socket the
//!   loop watches (`loop.add_reader`); the loop drains the whole queue in one
//!   callback, so wake-ups under load are batched.
//!
//! pyo3-async-runtimes provides the tokio runtime; its `future_into_py` (two
//! spawns, a blocking-pool hop that takes the GIL, and a
//! `call_soon_threadsafe` per await) is used only for one-off calls.

use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::ThreadId;

use futures::channel::oneshot;
use pyo3::exceptions::{PyRuntimeError, PyStopIteration};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// What a finished Rust future hands Python: made into a Python value on the
/// loop's thread, with the GIL held.
pub(crate) type Out = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// A Rust future whose result becomes a Python value.
pub(crate) type OutFuture = Pin<Box<dyn Future<Output = Out> + Send>>;

/// Work queued for the loop by another thread.
enum Job {
    Wake(Arc<Slot>),
    Run(Box<dyn FnOnce(Python<'_>) + Send>),
}

/// One asyncio event loop, seen from Rust.
pub(crate) struct Bridge {
    event_loop: Py<PyAny>,
    thread: ThreadId,
    queue: Mutex<Vec<Job>>,
    signal: UnixStream,
    /// Shared with the loop's reader callback, so the descriptor stays open
    /// for as long as the loop watches it.
    reader: Arc<UnixStream>,
    closed: AtomicBool,
    pub(crate) tokio: tokio::runtime::Handle,
}

impl Bridge {
    /// A bridge to the running loop of the calling thread.
    pub(crate) fn for_running_loop(py: Python<'_>) -> PyResult<Arc<Bridge>> {
        let asyncio = asyncio(py)?;
        let event_loop = asyncio.call_method0(intern!(py, "get_running_loop"))?;
        let (reader, signal) = UnixStream::pair()
            .map_err(|e| PyRuntimeError::new_err(format!("cannot make the wake-up socket: {e}")))?;
        for s in [&reader, &signal] {
            s.set_nonblocking(true)
                .map_err(|e| PyRuntimeError::new_err(format!("wake-up socket: {e}")))?;
        }
        let bridge = Arc::new(Bridge {
            event_loop: event_loop.clone().unbind(),
            thread: std::thread::current().id(),
            queue: Mutex::new(Vec::new()),
            signal,
            reader: Arc::new(reader),
            closed: AtomicBool::new(false),
            tokio: pyo3_async_runtimes::tokio::get_runtime().handle().clone(),
        });
        let drain = Py::new(
            py,
            Drain {
                bridge: Arc::downgrade(&bridge),
                reader: bridge.reader.clone(),
            },
        )?;
        event_loop.call_method1(
            intern!(py, "add_reader"),
            (bridge.reader.as_raw_fd(), drain),
        )?;
        if let Ok(mut all) = BRIDGES.lock() {
            all.push(Arc::downgrade(&bridge));
        }
        Ok(bridge)
    }

    /// Stops watching the wake-up socket (the runtime shut down).
    pub(crate) fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let closed: bool = self
            .event_loop
            .bind(py)
            .call_method0(intern!(py, "is_closed"))?
            .extract()?;
        if !closed {
            self.event_loop
                .bind(py)
                .call_method1(intern!(py, "remove_reader"), (self.reader.as_raw_fd(),))?;
        }
        Ok(())
    }

    /// Whether the calling thread is the loop's.
    pub(crate) fn on_loop_thread(&self) -> bool {
        std::thread::current().id() == self.thread
    }

    /// The event loop.
    pub(crate) fn event_loop<'py>(&self, py: Python<'py>) -> &Bound<'py, PyAny> {
        self.event_loop.bind(py)
    }

    fn push(&self, job: Job) {
        let was_empty = match self.queue.lock() {
            Ok(mut q) => {
                let empty = q.is_empty();
                q.push(job);
                empty
            }
            Err(_) => return,
        };
        if was_empty {
            // A full socket buffer already holds a wake-up: ignoring
            // WouldBlock loses nothing.
            let _ = (&self.signal).write(&[1]);
        }
    }

    /// Runs `f` on the loop's thread with the GIL: now if this is that
    /// thread, else queued for the loop.
    pub(crate) fn run_on_loop(&self, f: impl FnOnce(Python<'_>) + Send + 'static) {
        if self.on_loop_thread() {
            Python::attach(f);
        } else {
            self.push(Job::Run(Box::new(f)));
        }
    }

    fn drain(&self, py: Python<'_>) {
        let mut buf = [0u8; 256];
        while matches!((&*self.reader).read(&mut buf), Ok(n) if n > 0) {}
        loop {
            let jobs = match self.queue.lock() {
                Ok(mut q) => std::mem::take(&mut *q),
                Err(_) => return,
            };
            if jobs.is_empty() {
                return;
            }
            for job in jobs {
                match job {
                    Job::Wake(slot) => slot.resolve(py),
                    Job::Run(f) => f(py),
                }
            }
        }
    }

    /// An awaitable for a Rust future on this loop.
    pub(crate) fn awaitable(self: &Arc<Self>, fut: OutFuture) -> Awaitable {
        Awaitable {
            state: Mutex::new(Some(fut)),
            slot: Arc::new(Slot {
                woken: AtomicBool::new(false),
                future: Mutex::new(None),
                bridge: self.clone(),
            }),
        }
    }
}

/// The loop's callback for the wake-up socket.
#[pyclass(module = "coditect._native", frozen)]
struct Drain {
    bridge: std::sync::Weak<Bridge>,
    reader: Arc<UnixStream>,
}

#[pymethods]
impl Drain {
    fn __call__(&self, py: Python<'_>) {
        match self.bridge.upgrade() {
            Some(b) => b.drain(py),
            None => {
                let mut buf = [0u8; 256];
                while matches!((&*self.reader).read(&mut buf), Ok(n) if n > 0) {}
            }
        }
    }
}

static BRIDGES: Mutex<Vec<std::sync::Weak<Bridge>>> = Mutex::new(Vec::new());

/// A bridge to the running loop of the calling thread: one already open on
/// it, or a new one.
pub(crate) fn current(py: Python<'_>) -> PyResult<Arc<Bridge>> {
    let running = asyncio(py)?.call_method0(intern!(py, "get_running_loop"))?;
    if let Ok(mut all) = BRIDGES.lock() {
        all.retain(|w| w.strong_count() > 0);
        for b in all.iter().filter_map(|w| w.upgrade()) {
            if !b.closed.load(Ordering::Acquire) && b.event_loop.bind(py).is(&running) {
                return Ok(b);
            }
        }
    }
    Bridge::for_running_loop(py)
}

pub(crate) fn asyncio(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static ASYNCIO: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    ASYNCIO
        .get_or_try_init(py, || py.import("asyncio").map(Bound::unbind))
        .map(|m| m.bind(py))
}

/// Where an awaitable's waker leaves its wake-up.
struct Slot {
    woken: AtomicBool,
    /// The `asyncio.Future` the awaiting task waits on, while it waits.
    future: Mutex<Option<Py<PyAny>>>,
    bridge: Arc<Bridge>,
}

impl Slot {
    fn resolve(&self, py: Python<'_>) {
        let fut = self.future.lock().ok().and_then(|mut f| f.take());
        if let Some(f) = fut {
            let f = f.bind(py);
            if let Ok(false) = f
                .call_method0(intern!(py, "done"))
                .and_then(|d| d.is_truthy())
            {
                let _ = f.call_method1(intern!(py, "set_result"), (py.None(),));
            }
        }
    }
}

impl Wake for Slot {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if self.bridge.on_loop_thread() {
            Python::attach(|py| self.resolve(py));
        } else {
            self.bridge.push(Job::Wake(self.clone()));
        }
    }
}

/// A Rust future awaitable from Python (`await` it once).
#[pyclass(module = "coditect._native", name = "Pending", frozen)]
pub struct Awaitable {
    state: Mutex<Option<OutFuture>>,
    slot: Arc<Slot>,
}

impl Awaitable {
    fn step(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| PyRuntimeError::new_err("awaitable poisoned by a panic"))?;
        let Some(fut) = state.as_mut() else {
            return Err(PyRuntimeError::new_err(
                "cannot reuse an already awaited coditect awaitable",
            ));
        };
        let waker = Waker::from(self.slot.clone());
        let mut cx = Context::from_waker(&waker);
        let _tokio = self.slot.bridge.tokio.enter();
        // Futures woken while they are polled (the usual case in process) are
        // polled again at once, a bounded number of times.
        for _ in 0..64 {
            self.slot.woken.store(false, Ordering::Release);
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                fut.as_mut().poll(&mut cx)
            }));
            match polled {
                Ok(Poll::Ready(out)) => {
                    *state = None;
                    drop(state);
                    let value = out(py)?;
                    return Err(PyStopIteration::new_err((value,)));
                }
                Ok(Poll::Pending) => {
                    if !self.slot.woken.swap(false, Ordering::AcqRel) {
                        break;
                    }
                }
                Err(_) => {
                    *state = None;
                    return Err(PyRuntimeError::new_err("coditect: a Rust future panicked"));
                }
            }
        }
        let f = self
            .slot
            .bridge
            .event_loop(py)
            .call_method0(intern!(py, "create_future"))?;
        if self.slot.woken.swap(false, Ordering::AcqRel) {
            // Woken by its own poll after the last try: come back next turn.
            f.call_method1(intern!(py, "set_result"), (py.None(),))?;
        } else if let Ok(mut slot) = self.slot.future.lock() {
            *slot = Some(f.clone().unbind());
        }
        f.setattr(intern!(py, "_asyncio_future_blocking"), true)?;
        Ok(f.unbind())
    }

    fn cancel(&self) {
        let fut = self.state.lock().ok().and_then(|mut s| s.take());
        let _tokio = self.slot.bridge.tokio.enter();
        drop(fut);
    }
}

#[pymethods]
impl Awaitable {
    fn __await__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.step(py)
    }

    /// Resumes the awaitable (the coroutine protocol).
    fn send(&self, py: Python<'_>, _value: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.step(py)
    }

    /// Cancels the Rust work and raises `exc` (the coroutine protocol).
    #[pyo3(signature = (typ, val=None, _tb=None))]
    fn throw(
        &self,
        py: Python<'_>,
        typ: &Bound<'_, PyAny>,
        val: Option<&Bound<'_, PyAny>>,
        _tb: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.cancel();
        let exc = match val {
            Some(v) if !v.is_none() => v.clone(),
            _ if typ.is_instance_of::<pyo3::exceptions::PyBaseException>() => typ.clone(),
            _ => typ.call0()?,
        };
        let _ = py;
        Err(PyErr::from_value(exc))
    }

    /// Cancels the Rust work.
    fn close(&self) {
        self.cancel();
    }
}

/// The callable a Python future calls when done: wakes a Rust waker.
#[pyclass(module = "coditect._native", frozen)]
struct WakeOnDone {
    waker: Waker,
}

#[pymethods]
impl WakeOnDone {
    #[pyo3(signature = (*_args))]
    fn __call__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) {
        self.waker.wake_by_ref();
    }
}

/// What a Python callable produced: a value, or a coroutine still to run.
pub(crate) enum Called {
    Value(Py<PyAny>),
    Coroutine(Py<PyAny>),
}

impl Called {
    /// Sorts the result of a call.
    pub(crate) fn of(py: Python<'_>, obj: Bound<'_, PyAny>) -> PyResult<Called> {
        static ISCOROUTINE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let is_coro = ISCOROUTINE.get_or_try_init(py, || {
            asyncio(py)?.getattr("iscoroutine").map(Bound::unbind)
        })?;
        if is_coro.bind(py).call1((&obj,))?.is_truthy()? {
            Ok(Called::Coroutine(obj.unbind()))
        } else {
            Ok(Called::Value(obj.unbind()))
        }
    }
}

/// Calls `start` (which calls the Python function) and runs what it returns
/// to the end: inline if polled on the loop's thread, else as a task on the
/// loop. `finish` turns the result into a Rust value on the loop's thread.
pub(crate) fn drive<S, F, T>(bridge: Arc<Bridge>, start: S, finish: F) -> Driven<T>
where
    S: FnOnce(Python<'_>) -> PyResult<Called> + Send + 'static,
    F: Fn(Python<'_>, PyResult<Bound<'_, PyAny>>) -> T + Send + Sync + 'static,
    T: Send + 'static,
{
    Driven {
        bridge,
        state: DriveState::New {
            start: Box::new(start),
        },
        finish: Arc::new(finish),
    }
}

type Start = Box<dyn FnOnce(Python<'_>) -> PyResult<Called> + Send>;
type Finish<T> = Arc<dyn Fn(Python<'_>, PyResult<Bound<'_, PyAny>>) -> T + Send + Sync>;

enum DriveState<T> {
    New {
        start: Start,
    },
    /// Stepped inline on the loop's thread; `waiting` is the future it awaits.
    Inline {
        coro: Py<PyAny>,
        waiting: Option<Py<PyAny>>,
        cancel: bool,
    },
    /// Running as an `asyncio.Task` on the loop.
    Task {
        rx: oneshot::Receiver<T>,
        task: Arc<Mutex<Option<Py<PyAny>>>>,
    },
    Done,
}

/// A Python call run to the end; see [`drive`].
pub(crate) struct Driven<T> {
    bridge: Arc<Bridge>,
    state: DriveState<T>,
    finish: Finish<T>,
}

impl<T: Send + 'static> Driven<T> {
    /// Asks the running Python code to stop: the task is cancelled, an
    /// inline coroutine gets `CancelledError` at its next step.
    pub(crate) fn cancel(&mut self) {
        match &mut self.state {
            DriveState::Task { task, .. } => {
                let task = task.clone();
                self.bridge.run_on_loop(move |py| {
                    if let Some(t) = task
                        .lock()
                        .ok()
                        .and_then(|t| t.as_ref().map(|t| t.clone_ref(py)))
                    {
                        let _ = t.bind(py).call_method0(intern!(py, "cancel"));
                    }
                });
            }
            DriveState::Inline { cancel, .. } => {
                // Its next step raises CancelledError inside the coroutine
                // (and cancels what it awaits), as a cancelled task's does.
                *cancel = true;
            }
            _ => {}
        }
    }

    fn start_task(&mut self, start: Start) {
        let (tx, rx) = oneshot::channel();
        let task = Arc::new(Mutex::new(None));
        let finish = self.finish.clone();
        let bridge = self.bridge.clone();
        let slot = task.clone();
        self.bridge.run_on_loop(move |py| {
            let tx = Arc::new(Mutex::new(Some(tx)));
            let send = {
                let tx = tx.clone();
                let finish = finish.clone();
                move |py: Python<'_>, r: PyResult<Bound<'_, PyAny>>| {
                    if let Some(tx) = tx.lock().ok().and_then(|mut t| t.take()) {
                        let _ = tx.send(finish(py, r));
                    }
                }
            };
            let coro = match start(py) {
                Err(e) => return send(py, Err(e)),
                Ok(Called::Value(v)) => return send(py, Ok(v.into_bound(py))),
                Ok(Called::Coroutine(c)) => c,
            };
            let spawned = (|| -> PyResult<()> {
                let t = bridge
                    .event_loop(py)
                    .call_method1(intern!(py, "create_task"), (coro,))?;
                let on_done: DoneFn = Box::new(send.clone());
                let done = Py::new(
                    py,
                    TaskDone {
                        tx: Mutex::new(Some(on_done)),
                    },
                )?;
                t.call_method1(intern!(py, "add_done_callback"), (done,))?;
                if let Ok(mut s) = slot.lock() {
                    *s = Some(t.unbind());
                }
                Ok(())
            })();
            if let Err(e) = spawned {
                send(py, Err(e));
            }
        });
        self.state = DriveState::Task { rx, task };
    }
}

type DoneFn = Box<dyn FnOnce(Python<'_>, PyResult<Bound<'_, PyAny>>) + Send>;

/// A task's done callback: hands its result to Rust.
#[pyclass(module = "coditect._native", frozen)]
struct TaskDone {
    tx: Mutex<Option<DoneFn>>,
}

#[pymethods]
impl TaskDone {
    fn __call__(&self, py: Python<'_>, task: &Bound<'_, PyAny>) {
        let Some(f) = self.tx.lock().ok().and_then(|mut t| t.take()) else {
            return;
        };
        let r = task.call_method0(intern!(py, "result"));
        f(py, r);
    }
}

impl<T: Send + 'static> Future for Driven<T> {
    type Output = Option<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = &mut *self;
        loop {
            match std::mem::replace(&mut this.state, DriveState::Done) {
                DriveState::New { start } => {
                    if this.bridge.on_loop_thread() {
                        let started = Python::attach(|py| match start(py) {
                            Ok(Called::Coroutine(coro)) => Ok(coro),
                            Ok(Called::Value(v)) => Err((this.finish)(py, Ok(v.into_bound(py)))),
                            Err(e) => Err((this.finish)(py, Err(e))),
                        });
                        match started {
                            Ok(coro) => {
                                this.state = DriveState::Inline {
                                    coro,
                                    waiting: None,
                                    cancel: false,
                                }
                            }
                            Err(out) => return Poll::Ready(Some(out)),
                        }
                    } else {
                        this.start_task(start);
                    }
                }
                DriveState::Inline {
                    coro,
                    waiting,
                    cancel,
                } => {
                    if !this.bridge.on_loop_thread() {
                        // Moved off the loop (its caller gave up and the
                        // runtime winds it down elsewhere): finish it as a
                        // task on the loop.
                        let bridge = this.bridge.clone();
                        let finish = this.finish.clone();
                        let (tx, rx) = oneshot::channel();
                        bridge.run_on_loop(move |py| {
                            let e = throw_cancel(py, coro.bind(py));
                            let _ = tx.send(finish(py, Err(e)));
                        });
                        let _ = waiting;
                        this.state = DriveState::Task {
                            rx,
                            task: Arc::new(Mutex::new(None)),
                        };
                        continue;
                    }
                    let bridge = &this.bridge;
                    let step = Python::attach(|py| {
                        step_inline(py, bridge, coro.bind(py), waiting.as_ref(), cancel, cx)
                    });
                    match step {
                        Step::Wait(w) => {
                            this.state = DriveState::Inline {
                                coro,
                                waiting: w,
                                cancel: false,
                            };
                            return Poll::Pending;
                        }
                        Step::Finished(r) => {
                            let out =
                                Python::attach(|py| (this.finish)(py, r.map(|v| v.into_bound(py))));
                            return Poll::Ready(Some(out));
                        }
                    }
                }
                DriveState::Task { mut rx, task } => {
                    return match Pin::new(&mut rx).poll(cx) {
                        Poll::Ready(Ok(v)) => Poll::Ready(Some(v)),
                        Poll::Ready(Err(_)) => Poll::Ready(None),
                        Poll::Pending => {
                            this.state = DriveState::Task { rx, task };
                            Poll::Pending
                        }
                    };
                }
                DriveState::Done => return Poll::Ready(None),
            }
        }
    }
}

impl<T> Drop for Driven<T> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, DriveState::Done) {
            DriveState::Inline { coro, .. } => {
                self.bridge.run_on_loop(move |py| {
                    let _ = throw_cancel(py, coro.bind(py));
                });
            }
            DriveState::Task { task, .. } => {
                self.bridge.run_on_loop(move |py| {
                    if let Some(t) = task
                        .lock()
                        .ok()
                        .and_then(|t| t.as_ref().map(|t| t.clone_ref(py)))
                    {
                        let _ = t.bind(py).call_method0(intern!(py, "cancel"));
                    }
                });
            }
            _ => {}
        }
    }
}

enum Step {
    Wait(Option<Py<PyAny>>),
    Finished(PyResult<Py<PyAny>>),
}

/// One step of a coroutine run inline: what a task's step does.
fn step_inline(
    py: Python<'_>,
    bridge: &Bridge,
    coro: &Bound<'_, PyAny>,
    waiting: Option<&Py<PyAny>>,
    cancel: bool,
    cx: &mut Context<'_>,
) -> Step {
    let mut throw: Option<PyErr> = None;
    if cancel {
        if let Some(w) = waiting {
            let _ = w.bind(py).call_method0(intern!(py, "cancel"));
        }
        throw = Some(cancelled_error(py));
    } else if let Some(w) = waiting {
        let w = w.bind(py);
        match w
            .call_method0(intern!(py, "done"))
            .and_then(|d| d.is_truthy())
        {
            Ok(false) => return Step::Wait(Some(w.clone().unbind())),
            Ok(true) => {
                let cancelled = w
                    .call_method0(intern!(py, "cancelled"))
                    .and_then(|d| d.is_truthy())
                    .unwrap_or(false);
                if cancelled {
                    throw = Some(cancelled_error(py));
                }
            }
            Err(e) => throw = Some(e),
        }
    }
    let sent = match throw {
        Some(e) => coro.call_method1(intern!(py, "throw"), (e.into_value(py),)),
        None => coro.call_method1(intern!(py, "send"), (py.None(),)),
    };
    match sent {
        Ok(yielded) => {
            if yielded.is_none() {
                // A bare yield (`asyncio.sleep(0)`): come back next turn.
                let cb = WakeOnDone {
                    waker: cx.waker().clone(),
                };
                if let Err(e) = Py::new(py, cb).and_then(|cb| {
                    bridge
                        .event_loop(py)
                        .call_method1(intern!(py, "call_soon"), (cb,))
                }) {
                    return Step::Finished(Err(e));
                }
                return Step::Wait(None);
            }
            let blocking = yielded
                .getattr(intern!(py, "_asyncio_future_blocking"))
                .and_then(|b| b.is_truthy());
            match blocking {
                Ok(true) => {
                    let r = (|| -> PyResult<()> {
                        yielded.setattr(intern!(py, "_asyncio_future_blocking"), false)?;
                        let cb = Py::new(
                            py,
                            WakeOnDone {
                                waker: cx.waker().clone(),
                            },
                        )?;
                        yielded.call_method1(intern!(py, "add_done_callback"), (cb,))?;
                        Ok(())
                    })();
                    match r {
                        Ok(()) => Step::Wait(Some(yielded.unbind())),
                        Err(e) => Step::Finished(Err(e)),
                    }
                }
                _ => Step::Finished(Err(PyRuntimeError::new_err(format!(
                    "a coditect handler yielded {} instead of awaiting an asyncio future",
                    yielded.repr().map(|r| r.to_string()).unwrap_or_default()
                )))),
            }
        }
        Err(e) if e.is_instance_of::<PyStopIteration>(py) => {
            let value = e.value(py).getattr(intern!(py, "value")).map(Bound::unbind);
            Step::Finished(value)
        }
        Err(e) => Step::Finished(Err(e)),
    }
}

/// Throws `CancelledError` into a coroutine and closes it if it goes on;
/// the error it ended with.
fn throw_cancel(py: Python<'_>, coro: &Bound<'_, PyAny>) -> PyErr {
    let r = coro.call_method1(intern!(py, "throw"), (cancelled_error(py).into_value(py),));
    if r.is_ok() {
        let _ = coro.call_method0(intern!(py, "close"));
    }
    match r {
        Err(e) if !e.is_instance_of::<PyStopIteration>(py) => e,
        _ => cancelled_error(py),
    }
}

pub(crate) fn cancelled_error(py: Python<'_>) -> PyErr {
    match asyncio(py)
        .and_then(|a| a.getattr("CancelledError"))
        .and_then(|c| c.call0())
    {
        Ok(e) => PyErr::from_value(e),
        Err(e) => e,
    }
}
