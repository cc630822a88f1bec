//! Completion-port-on-io_uring threading experiment.
//!
//! Options (see README.md in this directory):
//!   A  = one shared ring, SQ under a mutex, leader/followers reaping, shared FIFO
//!        queue (Mutex<VecDeque>) + LIFO stack of idle followers (one Condvar each);
//!        posts wake an idle follower, or the leader (blocked in io_uring_enter)
//!        via a NOP SQE.
//!   B  = one shared ring, SQ under a mutex, dedicated reaper thread blocked in
//!        io_uring_enter pushing every CQE into a crossbeam MPMC channel; workers
//!        block on the channel; posts go straight into the channel.
//!   C  = one ring per worker (plain flags); shared FIFO queue for posted packets;
//!        idle workers block in their own ring; poster wakes an idle worker with
//!        IORING_OP_MSG_RING (if the poster is a worker) or an eventfd write
//!        (non-worker poster; each worker keeps a READ armed on its eventfd).
//!        I/O completions are processed only by the worker owning the ring.
//!   Cd = C with IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN.
//!
//! Workloads:
//!   post     : W poster threads push N user packets total; W workers dequeue. ops = packets.
//!   repost   : W*8 packets circulate; a worker that dequeues one re-posts it (from
//!              the worker thread). Time-bounded. ops = packets dequeued.
//!   nop      : W*8 NOPs in flight; each NOP completion -> submit another. ops = NOP CQEs.
//!   pingpong : W*8 AF_UNIX stream socketpairs; BOTH ends are driven by the port
//!              (RECV armed on each end; on RECV completion the worker submits
//!              SEND(64B)+RECV on that end). One 64-byte message in flight per pair.
//!              ops = RECV completions (= message deliveries; 2 per round trip).
//!
//!   handoff  : the main thread posts one packet, then blocks (Mutex+Condvar) until a
//!              worker has dequeued it; repeat for --dur. Every packet needs a wake-up of
//!              an idle worker (A: condvar, or NOP SQE if the only worker is the leader
//!              in io_uring_enter; B: channel futex; C/Cd: eventfd write -> ring CQE).
//!              ops = packets. CPU includes the poster and the constant reply wake-up.
//!
//! Usage: bench [--reps 3] [--dur 2.0] [--n 200000] [--ws 1,2,4]
//!              [--opts A,B,C,Cd] [--wl post,handoff,repost,nop,pingpong]

use crossbeam_channel as cb;
use io_uring::{opcode, squeue, types, IoUring};
use std::cell::UnsafeCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::*};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- user_data tags
const TAG_SHIFT: u32 = 56;
const T_USER: u64 = 1;
const T_RECV: u64 = 2;
const T_SEND: u64 = 3;
const T_NOP: u64 = 4;
const T_QUIT: u64 = 5;
const T_WAKE: u64 = 6; // internal: wake-up NOP / MSG_RING
const T_EFD: u64 = 7; // internal: eventfd read completion (option C)

fn ud(tag: u64, idx: u64) -> u64 {
    (tag << TAG_SHIFT) | idx
}
fn tag_of(u: u64) -> u64 {
    u >> TAG_SHIFT
}
fn idx_of(u: u64) -> u64 {
    u & ((1 << TAG_SHIFT) - 1)
}

#[derive(Clone, Copy, Debug)]
struct Compl {
    ud: u64,
    res: i32,
}

unsafe fn enter_wait(ring: &IoUring, to_submit: u32, min: u32) {
    loop {
        match ring
            .submitter()
            .enter::<libc::sigset_t>(to_submit, min, io_uring::EnterFlags::GETEVENTS.bits(), None)
        {
            Ok(_) => return,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return,
            Err(e) => panic!("io_uring_enter: {e}"),
        }
    }
}

fn submit_all(ring: &IoUring, sqes: &[squeue::Entry]) {
    unsafe {
        let mut sq = ring.submission_shared();
        for e in sqes {
            while sq.push(e).is_err() {
                sq.sync();
                ring.submitter().submit().unwrap();
                sq.sync();
            }
        }
        sq.sync();
    }
    loop {
        match ring.submitter().submit() {
            Ok(_) => return,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => panic!("submit: {e}"),
        }
    }
}

// ---------------------------------------------------------------- Port trait
trait Port: Send + Sync {
    fn init_worker(&self, _tid: usize) {}
    fn fini_worker(&self, _tid: usize) {}
    /// `from`: Some(worker tid) if called on a worker thread.
    fn post(&self, from: Option<usize>, c: Compl);
    fn submit(&self, tid: usize, sqes: &[squeue::Entry]);
    fn get(&self, tid: usize) -> Compl;
    fn shutdown(&self) {}
}

// ---------------------------------------------------------------- Option A
struct AState {
    q: VecDeque<Compl>,
    idle: Vec<usize>, // LIFO stack of idle followers
    woken: Vec<bool>,
    leader: bool,
    wake_pending: bool,
}
struct PortA {
    ring: IoUring,
    sq: Mutex<()>,
    st: Mutex<AState>,
    cvs: Vec<Condvar>,
}
impl PortA {
    fn new(w: usize) -> Self {
        PortA {
            ring: IoUring::builder().setup_cqsize(8192).build(1024).unwrap(),
            sq: Mutex::new(()),
            st: Mutex::new(AState {
                q: VecDeque::with_capacity(1024),
                idle: Vec::new(),
                woken: vec![false; w],
                leader: false,
                wake_pending: false,
            }),
            cvs: (0..w).map(|_| Condvar::new()).collect(),
        }
    }
    fn nop_wake(&self) {
        let _g = self.sq.lock().unwrap();
        submit_all(&self.ring, &[opcode::Nop::new().build().user_data(ud(T_WAKE, 0))]);
    }
    /// Drain CQ (caller is the unique leader). Returns number of user-visible CQEs.
    /// Returns true if an internal wake-up CQE was consumed.
    fn drain(&self, out: &mut Vec<Compl>) -> bool {
        let mut woke = false;
        let cq = unsafe { self.ring.completion_shared() };
        for c in cq {
            if tag_of(c.user_data()) != T_WAKE {
                out.push(Compl { ud: c.user_data(), res: c.result() });
            } else {
                woke = true;
            }
        }
        woke
    }
    fn cq_nonempty(&self) -> bool {
        let cq = unsafe { self.ring.completion_shared() };
        let r = !cq.is_empty();
        // Don't let Drop write the (unchanged) CQ head back: avoids dirtying a shared line.
        std::mem::forget(cq);
        r
    }
    /// After the leader pushed new items: wake idle followers for the extra items,
    /// and promote one more idle follower to leader.
    fn after_leader(&self, s: &mut AState) -> Vec<usize> {
        let mut wake = Vec::new();
        let extra = s.q.len().saturating_sub(1); // the releasing leader takes one
        let mut n = extra.min(s.idle.len());
        // promote one to be the next leader if anyone is left idle
        if s.idle.len() > n {
            n += 1;
        }
        for _ in 0..n {
            let t = s.idle.pop().unwrap();
            s.woken[t] = true;
            wake.push(t);
        }
        wake
    }
}
impl Port for PortA {
    fn post(&self, _from: Option<usize>, c: Compl) {
        let mut s = self.st.lock().unwrap();
        s.q.push_back(c);
        if let Some(t) = s.idle.pop() {
            s.woken[t] = true;
            drop(s);
            self.cvs[t].notify_one();
        } else if s.leader && !s.wake_pending {
            s.wake_pending = true;
            drop(s);
            self.nop_wake();
        }
    }
    fn submit(&self, _tid: usize, sqes: &[squeue::Entry]) {
        let _g = self.sq.lock().unwrap();
        submit_all(&self.ring, sqes);
    }
    fn get(&self, tid: usize) -> Compl {
        let mut buf = Vec::new(); // allocates only if this call actually reaps
        let mut s = self.st.lock().unwrap();
        loop {
            // Opportunistic non-blocking reap so I/O completions are not starved by posts.
            if !s.leader && self.cq_nonempty() {
                s.leader = true;
                drop(s);
                self.drain(&mut buf);
                s = self.st.lock().unwrap();
                s.leader = false;
                // A poster may have seen leader==true and sent a wake NOP meanwhile; its CQE
                // may already have been eaten by the drain above. No leader => no wake owed.
                s.wake_pending = false;
                s.q.extend(buf.drain(..));
            }
            if let Some(c) = s.q.pop_front() {
                return c;
            }
            if !s.leader {
                // Become the leader: block in the kernel and reap for everyone.
                s.leader = true;
                drop(s);
                loop {
                    let woke = self.drain(&mut buf);
                    if !buf.is_empty() {
                        break;
                    }
                    {
                        // A wake NOP only produces an internal CQE; check the queue.
                        let mut s = self.st.lock().unwrap();
                        if woke {
                            s.wake_pending = false;
                        }
                        if !s.q.is_empty() {
                            break;
                        }
                    }
                    unsafe { enter_wait(&self.ring, 0, 1) };
                }
                s = self.st.lock().unwrap();
                s.leader = false;
                s.wake_pending = false;
                s.q.extend(buf.drain(..));
                let wake = self.after_leader(&mut s);
                let c = s.q.pop_front();
                drop(s);
                for t in wake {
                    self.cvs[t].notify_one();
                }
                if let Some(c) = c {
                    return c;
                }
                s = self.st.lock().unwrap();
                continue;
            }
            // Follower: park on our own condvar (LIFO stack).
            s.idle.push(tid);
            s.woken[tid] = false;
            while !s.woken[tid] {
                s = self.cvs[tid].wait(s).unwrap();
            }
        }
    }
}

// ---------------------------------------------------------------- Option B
struct PortB {
    ring: Arc<IoUring>,
    sq: Mutex<()>,
    tx: cb::Sender<Compl>,
    rx: cb::Receiver<Compl>,
    stop: Arc<AtomicBool>,
    reaper: Mutex<Option<std::thread::JoinHandle<()>>>,
}
impl PortB {
    fn new() -> Self {
        let ring = Arc::new(IoUring::builder().setup_cqsize(8192).build(1024).unwrap());
        let (tx, rx) = cb::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let (r2, tx2, s2) = (ring.clone(), tx.clone(), stop.clone());
        let h = std::thread::spawn(move || loop {
            unsafe { enter_wait(&r2, 0, 1) };
            let cq = unsafe { r2.completion_shared() };
            for c in cq {
                if tag_of(c.user_data()) != T_WAKE {
                    tx2.send(Compl { ud: c.user_data(), res: c.result() }).unwrap();
                }
            }
            if s2.load(Acquire) {
                return;
            }
        });
        PortB { ring, sq: Mutex::new(()), tx, rx, stop, reaper: Mutex::new(Some(h)) }
    }
}
impl Port for PortB {
    fn post(&self, _from: Option<usize>, c: Compl) {
        self.tx.send(c).unwrap();
    }
    fn submit(&self, _tid: usize, sqes: &[squeue::Entry]) {
        let _g = self.sq.lock().unwrap();
        submit_all(&self.ring, sqes);
    }
    fn get(&self, _tid: usize) -> Compl {
        self.rx.recv().unwrap()
    }
    fn shutdown(&self) {
        self.stop.store(true, Release);
        self.submit(0, &[opcode::Nop::new().build().user_data(ud(T_WAKE, 0))]);
        if let Some(h) = self.reaper.lock().unwrap().take() {
            h.join().unwrap();
        }
    }
}

// ---------------------------------------------------------------- Option C / Cd
struct CWorker {
    ring: IoUring,
    local: VecDeque<Compl>,
    efd_buf: *mut u64,
}
struct Slot(UnsafeCell<Option<CWorker>>);
unsafe impl Sync for Slot {}
unsafe impl Send for Slot {}
struct CState {
    q: VecDeque<Compl>,
    idle: Vec<usize>, // LIFO
}
struct PortC {
    defer: bool,
    st: Mutex<CState>,
    slots: Vec<Slot>,
    ring_fds: Vec<AtomicI32>,
    efds: Vec<i32>,
}
impl PortC {
    fn new(w: usize, defer: bool) -> Self {
        PortC {
            defer,
            st: Mutex::new(CState { q: VecDeque::with_capacity(1024), idle: Vec::new() }),
            slots: (0..w).map(|_| Slot(UnsafeCell::new(None))).collect(),
            ring_fds: (0..w).map(|_| AtomicI32::new(-1)).collect(),
            efds: (0..w)
                .map(|_| unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) })
                .collect(),
        }
    }
    #[allow(clippy::mut_from_ref)]
    fn me(&self, tid: usize) -> &mut CWorker {
        unsafe { (*self.slots[tid].0.get()).as_mut().unwrap() }
    }
    fn arm_efd(&self, tid: usize, w: &mut CWorker) {
        let e = opcode::Read::new(types::Fd(self.efds[tid]), w.efd_buf as *mut u8, 8)
            .build()
            .user_data(ud(T_EFD, 0));
        submit_all(&w.ring, &[e]);
    }
    /// Move CQEs from own CQ into local deque; handle internal ones.
    fn harvest(&self, tid: usize, w: &mut CWorker) -> usize {
        let mut n = 0;
        let mut rearm = false;
        {
            let cq = unsafe { w.ring.completion_shared() };
            for c in cq {
                match tag_of(c.user_data()) {
                    T_WAKE => {}
                    T_EFD => rearm = true,
                    _ => {
                        w.local.push_back(Compl { ud: c.user_data(), res: c.result() });
                        n += 1;
                    }
                }
            }
        }
        if rearm {
            self.arm_efd(tid, w);
        }
        n
    }
}
impl Port for PortC {
    fn init_worker(&self, tid: usize) {
        let mut b = IoUring::builder();
        b.setup_cqsize(8192);
        if self.defer {
            b.setup_single_issuer().setup_defer_taskrun();
        }
        let ring = b.build(1024).unwrap();
        self.ring_fds[tid].store(ring.as_raw_fd_(), Release);
        let efd_buf = Box::leak(Box::new(0u64)) as *mut u64;
        unsafe { *self.slots[tid].0.get() = Some(CWorker { ring, local: VecDeque::new(), efd_buf }) };
        let w = self.me(tid);
        self.arm_efd(tid, w);
    }
    fn fini_worker(&self, tid: usize) {
        unsafe { *self.slots[tid].0.get() = None };
    }
    fn post(&self, from: Option<usize>, c: Compl) {
        let mut s = self.st.lock().unwrap();
        s.q.push_back(c);
        let t = s.idle.pop();
        drop(s);
        if let Some(t) = t {
            match from {
                Some(me) => {
                    let w = self.me(me);
                    let target = self.ring_fds[t].load(Acquire);
                    let e = opcode::MsgRingData::new(types::Fd(target), 0, ud(T_WAKE, 0), None)
                        .build()
                        .flags(squeue::Flags::SKIP_SUCCESS)
                        .user_data(ud(T_WAKE, 1));
                    submit_all(&w.ring, &[e]);
                }
                None => {
                    let one: u64 = 1;
                    unsafe { libc::write(self.efds[t], &one as *const u64 as *const _, 8) };
                }
            }
        }
    }
    fn submit(&self, tid: usize, sqes: &[squeue::Entry]) {
        submit_all(&self.me(tid).ring, sqes);
    }
    fn get(&self, tid: usize) -> Compl {
        let w = self.me(tid);
        loop {
            if let Some(c) = w.local.pop_front() {
                return c;
            }
            if self.defer {
                // deferred task work only runs on GETEVENTS enters
                if unsafe { w.ring.submission_shared() }.taskrun() {
                    unsafe { enter_wait(&w.ring, 0, 0) };
                }
            }
            if self.harvest(tid, w) > 0 {
                continue;
            }
            {
                let mut s = self.st.lock().unwrap();
                if let Some(c) = s.q.pop_front() {
                    return c;
                }
                s.idle.push(tid);
            }
            unsafe { enter_wait(&w.ring, 0, 1) };
            self.harvest(tid, w);
            let mut s = self.st.lock().unwrap();
            if let Some(p) = s.idle.iter().position(|&x| x == tid) {
                s.idle.remove(p);
            }
        }
    }
}

trait RawFdExt {
    fn as_raw_fd_(&self) -> i32;
}
impl RawFdExt for IoUring {
    fn as_raw_fd_(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.as_raw_fd()
    }
}

// ---------------------------------------------------------------- measurement
fn cpu_usage() -> (f64, i64, i64) {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    (t(ru.ru_utime) + t(ru.ru_stime), ru.ru_nvcsw, ru.ru_nivcsw)
}

#[repr(align(128))]
#[derive(Default)]
struct Counter(AtomicU64);

struct Bufs {
    fds: Vec<i32>,       // 2 per pair
    rbuf: *mut [u8; 64], // one per end
    sbuf: *mut [u8; 64],
}
unsafe impl Send for Bufs {}
unsafe impl Sync for Bufs {}

fn make_port(opt: &str, w: usize) -> Arc<dyn Port> {
    match opt {
        "A" => Arc::new(PortA::new(w)),
        "B" => Arc::new(PortB::new()),
        "C" => Arc::new(PortC::new(w, false)),
        "Cd" => Arc::new(PortC::new(w, true)),
        _ => panic!("unknown option {opt}"),
    }
}

struct Res {
    ops: u64,
    secs: f64,
    cpu: f64,
    vcsw: i64,
}

fn run(opt: &str, wl: &str, w: usize, dur: f64, n_post: u64) -> Res {
    let port = make_port(opt, w);
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Arc<Vec<Counter>> = Arc::new((0..w).map(|_| Counter::default()).collect());
    let barrier = Arc::new(Barrier::new(w + 1));
    let handoff = Arc::new((Mutex::new(0u64), Condvar::new()));
    const PER: usize = 8;

    // pingpong sockets: W*8 pairs, pairs [tid*8 .. tid*8+8) seeded by worker tid
    let bufs = Arc::new(if wl == "pingpong" {
        let npairs = w * PER;
        let mut fds = Vec::new();
        for _ in 0..npairs {
            let mut sv = [0i32; 2];
            let r = unsafe {
                libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr())
            };
            assert_eq!(r, 0);
            fds.extend_from_slice(&sv);
        }
        let nends = fds.len();
        // leaked on purpose: the kernel may still reference them after ring teardown
        let rbuf = Box::leak(vec![[0u8; 64]; nends].into_boxed_slice()).as_mut_ptr();
        let sbuf = Box::leak(vec![[7u8; 64]; nends].into_boxed_slice()).as_mut_ptr();
        Bufs { fds, rbuf, sbuf }
    } else {
        Bufs { fds: vec![], rbuf: std::ptr::null_mut(), sbuf: std::ptr::null_mut() }
    });

    let mut hs = Vec::new();
    for tid in 0..w {
        let (port, stop, counters, barrier, bufs, handoff) = (
            port.clone(),
            stop.clone(),
            counters.clone(),
            barrier.clone(),
            bufs.clone(),
            handoff.clone(),
        );
        let wl = wl.to_string();
        hs.push(std::thread::spawn(move || {
            port.init_worker(tid);
            barrier.wait();
            let recv = |end: usize| {
                let p = unsafe { bufs.rbuf.add(end) } as *mut u8;
                opcode::Recv::new(types::Fd(bufs.fds[end]), p, 64).build().user_data(ud(T_RECV, end as u64))
            };
            // seed
            match wl.as_str() {
                "nop" => {
                    let v: Vec<_> =
                        (0..PER).map(|_| opcode::Nop::new().build().user_data(ud(T_NOP, 0))).collect();
                    port.submit(tid, &v);
                }
                "repost" => {
                    for _ in 0..PER {
                        port.post(Some(tid), Compl { ud: ud(T_USER, 0), res: 0 });
                    }
                }
                "pingpong" => {
                    let mut v = Vec::new();
                    for pair in tid * PER..(tid + 1) * PER {
                        v.push(recv(2 * pair));
                        v.push(recv(2 * pair + 1));
                    }
                    port.submit(tid, &v);
                    for pair in tid * PER..(tid + 1) * PER {
                        let m = [1u8; 64];
                        let r = unsafe { libc::write(bufs.fds[2 * pair], m.as_ptr() as *const _, 64) };
                        assert_eq!(r, 64);
                    }
                }
                _ => {}
            }
            let cnt = &counters[tid].0;
            loop {
                let c = port.get(tid);
                match tag_of(c.ud) {
                    T_QUIT => break,
                    T_USER => {
                        cnt.fetch_add(1, Relaxed);
                        if wl == "repost" && !stop.load(Relaxed) {
                            port.post(Some(tid), c);
                        } else if wl == "handoff" {
                            *handoff.0.lock().unwrap() += 1;
                            handoff.1.notify_one();
                        }
                    }
                    T_NOP => {
                        cnt.fetch_add(1, Relaxed);
                        if !stop.load(Relaxed) {
                            port.submit(tid, &[opcode::Nop::new().build().user_data(ud(T_NOP, 0))]);
                        }
                    }
                    T_RECV => {
                        let end = idx_of(c.ud) as usize;
                        if c.res <= 0 {
                            continue; // EOF/cancel at teardown
                        }
                        cnt.fetch_add(1, Relaxed);
                        if !stop.load(Relaxed) {
                            unsafe { *bufs.sbuf.add(end) = *bufs.rbuf.add(end) };
                            let sp = unsafe { bufs.sbuf.add(end) } as *const u8;
                            let send = opcode::Send::new(types::Fd(bufs.fds[end]), sp, c.res as u32)
                                .build()
                                .user_data(ud(T_SEND, end as u64));
                            port.submit(tid, &[send, recv(end)]);
                        }
                    }
                    T_SEND => {
                        assert!(c.res > 0 || stop.load(Relaxed), "send failed {}", c.res);
                    }
                    t => panic!("unexpected tag {t}"),
                }
            }
            port.fini_worker(tid);
        }));
    }

    barrier.wait();
    let t0 = Instant::now();
    let (c0, v0, _) = cpu_usage();
    let (ops, secs, cpu, vcsw);
    if wl == "post" {
        let mut ps = Vec::new();
        let per = n_post / w as u64;
        for _ in 0..w {
            let port = port.clone();
            ps.push(std::thread::spawn(move || {
                for i in 0..per {
                    port.post(None, Compl { ud: ud(T_USER, i), res: 0 });
                }
            }));
        }
        for p in ps {
            p.join().unwrap();
        }
        for _ in 0..w {
            port.post(None, Compl { ud: ud(T_QUIT, 0), res: 0 });
        }
        for h in hs.drain(..) {
            h.join().unwrap();
        }
        let (c1, v1, _) = cpu_usage();
        secs = t0.elapsed().as_secs_f64();
        ops = counters.iter().map(|c| c.0.load(Relaxed)).sum::<u64>();
        assert_eq!(ops, per * w as u64);
        cpu = c1 - c0;
        vcsw = v1 - v0;
    } else {
        if wl == "handoff" {
            // main thread is the (single, non-worker) poster: post one packet, block
            // until a worker has dequeued it, repeat. Every packet needs a wake-up.
            let deadline = t0 + Duration::from_secs_f64(dur);
            let mut i = 0u64;
            while Instant::now() < deadline {
                port.post(None, Compl { ud: ud(T_USER, i), res: 0 });
                i += 1;
                let mut g = handoff.0.lock().unwrap();
                while *g < i {
                    g = handoff.1.wait(g).unwrap();
                }
            }
        } else {
            std::thread::sleep(Duration::from_secs_f64(dur));
        }
        let (c1, v1, _) = cpu_usage();
        secs = t0.elapsed().as_secs_f64();
        ops = counters.iter().map(|c| c.0.load(Relaxed)).sum::<u64>();
        stop.store(true, Relaxed);
        cpu = c1 - c0;
        vcsw = v1 - v0;
        for _ in 0..w {
            port.post(None, Compl { ud: ud(T_QUIT, 0), res: 0 });
        }
        for h in hs.drain(..) {
            h.join().unwrap();
        }
    }
    port.shutdown();
    for &fd in &bufs.fds {
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
    drop(port); // rings closed here (pending RECVs get cancelled)
    for &fd in &bufs.fds {
        unsafe { libc::close(fd) };
    }
    Res { ops, secs, cpu, vcsw }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str, d: &str| -> String {
        args.iter().position(|a| a == k).map(|i| args[i + 1].clone()).unwrap_or(d.to_string())
    };
    let reps: usize = get("--reps", "3").parse().unwrap();
    let dur: f64 = get("--dur", "2.0").parse().unwrap();
    let n_post: u64 = get("--n", "200000").parse().unwrap();
    let ws: Vec<usize> = get("--ws", "1,2,4").split(',').map(|s| s.parse().unwrap()).collect();
    let opts: Vec<String> = get("--opts", "A,B,C,Cd").split(',').map(String::from).collect();
    let wls: Vec<String> =
        get("--wl", "post,handoff,repost,nop,pingpong").split(',').map(String::from).collect();

    // key -> vec of (ops/s, cpu us/op, vcsw/op)
    let mut results: Vec<((String, String, usize), Vec<(f64, f64, f64)>)> = Vec::new();
    for rep in 0..reps {
        for wl in &wls {
            for &w in &ws {
                for opt in &opts {
                    let r = run(opt, wl, w, dur, n_post);
                    let ops_s = r.ops as f64 / r.secs;
                    let us = r.cpu * 1e6 / r.ops as f64;
                    let cs = r.vcsw as f64 / r.ops as f64;
                    eprintln!(
                        "rep={rep} opt={opt:<2} wl={wl:<8} W={w} ops={:>9} t={:.3}s ops/s={:>10.0} cpu_us/op={:.3} vcsw/op={:.3}",
                        r.ops, r.secs, ops_s, us, cs
                    );
                    let key = (opt.clone(), wl.clone(), w);
                    match results.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, v)) => v.push((ops_s, us, cs)),
                        None => results.push((key, vec![(ops_s, us, cs)])),
                    }
                }
            }
        }
    }
    println!("| option | workload | W | median ops/s | min..max ops/s | median CPU µs/op | median vol. ctx-sw/op | runs |");
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    let mut sorted = results;
    sorted.sort_by(|a, b| (&a.0 .1, a.0 .2, &a.0 .0).cmp(&(&b.0 .1, b.0 .2, &b.0 .0)));
    for ((opt, wl, w), v) in &sorted {
        let mut o: Vec<f64> = v.iter().map(|x| x.0).collect();
        let mut c: Vec<f64> = v.iter().map(|x| x.1).collect();
        let mut s: Vec<f64> = v.iter().map(|x| x.2).collect();
        let (mn, mx) = (
            o.iter().cloned().fold(f64::MAX, f64::min),
            o.iter().cloned().fold(0.0, f64::max),
        );
        println!(
            "| {opt} | {wl} | {w} | {:.0} | {:.0}..{:.0} | {:.2} | {:.3} | {} |",
            median(&mut o),
            mn,
            mx,
            median(&mut c),
            median(&mut s),
            v.len()
        );
    }
}
