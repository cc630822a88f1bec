//! The chat's shared state: nicknames, rooms with their members and history, and fan-out.
//!
//! Locks: `nicks` (the nickname registry) and `rooms` (the room table) are held only to look
//! up or change the tables; each room has its own lock, held while its history is appended and
//! its members are pushed to, so every member sees a room's events in the same order as its
//! history. A pusher never waits on a socket: [`Outbox::push`] queues (or drops a slow
//! client) and at most starts one send.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use smallvec::SmallVec;

use super::ChatConfig;
use super::proto::{
    Encoded, Event, Listing, ProtoError, encode_listing, now_ms, room_name, valid_nick,
};
use crate::server::{Outbox, PushError};

/// The most nicknames a `joined` or `members` event lists (a join to a room of thousands
/// would otherwise send each joiner every name; `rooms` gives the counts).
pub(crate) const MAX_LISTED: usize = 256;

/// The first `n` nicknames of `members`, sorted. Each name is looked at once but only those
/// among the first `n` so far are copied: a join to a room of 5,000 copied and sorted all
/// 5,000 names (under the room's lock) to send 256, which made 5,000 joins quadratic.
pub(crate) fn first_nicks<'a>(
    members: impl Iterator<Item = &'a Arc<Member>>,
    n: usize,
) -> Vec<(Arc<str>, u64)> {
    let mut heap: BinaryHeap<(Arc<str>, u64)> = BinaryHeap::with_capacity(n.min(1024));
    for m in members {
        let nick = m.nick.lock();
        if heap.len() < n {
            heap.push((nick.clone(), m.id()));
        } else if let Some(mut top) = heap.peek_mut()
            && *nick < top.0
        {
            top.0 = nick.clone();
            top.1 = m.id();
        }
    }
    heap.into_sorted_vec()
}

/// The nickname table's key for `nick`: its lower case, sharing `nick` when it is lower case
/// already (a guest's, most others).
fn nick_key(nick: &Arc<str>) -> Arc<str> {
    if nick.bytes().any(|b| b.is_ascii_uppercase()) {
        nick.to_ascii_lowercase().into()
    } else {
        nick.clone()
    }
}

/// Which transport a member uses (which encoding it is sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Ws,
    Tcp,
}

/// A connected client that has a nickname.
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) kind: Kind,
    pub(crate) outbox: Outbox,
    /// Shared (not copied) by the nickname table's key when it is in lower case already, and
    /// by the rooms' listings.
    pub(crate) nick: Mutex<Arc<str>>,
    /// Rooms joined, the current one last: each name shared with the room table's key, and
    /// one held inline (most members are in one room: no allocation for the list).
    pub(crate) rooms: Mutex<SmallVec<[Arc<str>; 1]>>,
}

impl Member {
    fn id(&self) -> u64 {
        self.outbox.id()
    }

    pub(crate) fn nick(&self) -> String {
        self.nick.lock().to_string()
    }

    fn nick_shared(&self) -> Arc<str> {
        self.nick.lock().clone()
    }

    fn pick<'a>(&self, e: &'a Encoded) -> &'a Bytes {
        match self.kind {
            Kind::Ws => &e.ws,
            Kind::Tcp => &e.tcp,
        }
    }
}

#[derive(Debug, Default)]
struct Room {
    members: HashMap<u64, Arc<Member>>,
    history: VecDeque<Encoded>,
    /// The first [`MAX_LISTED`] nicknames of the members, sorted: what `joined` and `members`
    /// list, with the member ids. Kept up to date by joins, leaves and nick changes (under
    /// the room's lock), so a join to a room of thousands does not look at every name; only
    /// the leave of a listed member from a room with more than that many looks at them all
    /// again. Entries are found by id, so a nick changed meanwhile cannot leave one stale.
    listed: Vec<(Arc<str>, u64)>,
    /// Taken out of the room table (it emptied); set under the table's lock and the room's.
    removed: bool,
}

impl Room {
    /// Lists member `id` (already in `members`) as `nick`: it joined, or was renamed.
    fn list(&mut self, nick: &Arc<str>, id: u64) {
        let mut was_listed = false;
        if let Some(i) = self.listed.iter().position(|x| x.1 == id) {
            if self.listed[i].0 == *nick {
                return; // listed already (a rename raced with the join)
            }
            self.listed.remove(i);
            was_listed = true;
        }
        // Unless every other member is listed, a listed member renamed leaves a place that
        // one of the unlisted may take: look at them all (rare: a big room, a listed name).
        let others_all_listed = self.members.len() <= self.listed.len() + 1;
        if was_listed && !others_all_listed {
            self.listed = first_nicks(self.members.values(), MAX_LISTED);
            return;
        }
        let at = self.listed.partition_point(|x| *x.0 < **nick);
        if at < MAX_LISTED {
            self.listed.insert(at, (nick.clone(), id));
            self.listed.truncate(MAX_LISTED);
        }
    }

    /// Takes member `id` out of the listing (it left), refilling the listing from the
    /// members when names beyond it exist.
    fn unlist(&mut self, id: u64) {
        if let Some(i) = self.listed.iter().position(|x| x.1 == id) {
            self.listed.remove(i);
            if self.members.len() > self.listed.len() {
                self.listed = first_nicks(self.members.values(), MAX_LISTED);
            }
        }
    }
}

/// Counters of the chat (all connections of both transports).
#[derive(Debug, Default)]
pub(crate) struct ChatCounters {
    pub(crate) messages: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) undelivered: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    pub(crate) bad_input: AtomicU64,
}

/// Nicknames, rooms, fan-out.
#[derive(Debug)]
pub(crate) struct Hub {
    pub(crate) cfg: ChatConfig,
    /// By lower-case nickname.
    nicks: Mutex<HashMap<Arc<str>, Arc<Member>>>,
    rooms: Mutex<HashMap<Arc<str>, Arc<Mutex<Room>>>>,
    guests: AtomicU64,
    pub(crate) counters: ChatCounters,
}

impl Hub {
    pub(crate) fn new(cfg: ChatConfig) -> Self {
        Hub {
            cfg,
            nicks: Mutex::new(HashMap::new()),
            rooms: Mutex::new(HashMap::new()),
            guests: AtomicU64::new(1),
            counters: ChatCounters::default(),
        }
    }

    /// Sends one event to one member, encoded for its transport only.
    pub(crate) fn tell(&self, m: &Member, ev: &Event) {
        let buf = match m.kind {
            Kind::Ws => ev.to_ws(),
            Kind::Tcp => ev.to_tcp(),
        };
        self.send(m, buf);
    }

    /// Sends a room's member listing to one member, written straight from the room's list.
    fn tell_listing(&self, m: &Member, listing: Listing, name: &str, room: &Room) {
        let names = room.listed.iter().map(|x| &*x.0);
        self.send(m, encode_listing(m.kind == Kind::Ws, listing, name, names));
    }

    fn deliver(&self, m: &Member, e: &Encoded) {
        self.send(m, m.pick(e).clone());
    }

    fn send(&self, m: &Member, buf: Bytes) {
        match m.outbox.push(buf) {
            Ok(()) => self.counters.deliveries.fetch_add(1, Ordering::Relaxed),
            Err(PushError::Closed | PushError::Full) => {
                self.counters.undelivered.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    /// A new member with a guest nickname, in the default room.
    pub(crate) fn enter(&self, kind: Kind, outbox: Outbox) -> Arc<Member> {
        let member = loop {
            let nick: Arc<str> =
                format!("guest{}", self.guests.fetch_add(1, Ordering::Relaxed)).into();
            let mut nicks = self.nicks.lock();
            let key = nick_key(&nick);
            if nicks.contains_key(&key) {
                continue;
            }
            let m = Arc::new(Member {
                kind,
                outbox: outbox.clone(),
                nick: Mutex::new(nick),
                rooms: Mutex::new(SmallVec::new()),
            });
            nicks.insert(key, m.clone());
            break m;
        };
        self.tell(&member, &Event::Welcome { nick: member.nick() });
        let room = self.cfg.default_room.clone();
        if let Err(e) = self.join(&member, &room) {
            self.tell(&member, &Event::Error(e));
        }
        member
    }

    /// The member left (its connection closed).
    pub(crate) fn exit(&self, m: &Arc<Member>) {
        let rooms = std::mem::take(&mut *m.rooms.lock());
        for r in rooms {
            self.part(m, &r, false);
        }
        let key = m.nick().to_ascii_lowercase();
        let mut nicks = self.nicks.lock();
        if nicks.get(key.as_str()).is_some_and(|x| Arc::ptr_eq(x, m)) {
            nicks.remove(key.as_str());
        }
    }

    fn room(&self, name: &str, create: bool) -> Result<Arc<Mutex<Room>>, ProtoError> {
        Ok(self.room_entry(name, create)?.1)
    }

    /// The room called `name` (created when `create`), with the room table's copy of its name.
    fn room_entry(
        &self,
        name: &str,
        create: bool,
    ) -> Result<(Arc<str>, Arc<Mutex<Room>>), ProtoError> {
        let mut rooms = self.rooms.lock();
        if let Some((k, r)) = rooms.get_key_value(name) {
            return Ok((k.clone(), r.clone()));
        }
        if !create {
            return Err(ProtoError::new("no_such_room", format!("no room #{name}")));
        }
        if rooms.len() >= self.cfg.max_rooms {
            return Err(ProtoError::new("too_many_rooms", "the server has too many rooms"));
        }
        let r = Arc::new(Mutex::new(Room::default()));
        let key: Arc<str> = name.into();
        rooms.insert(key.clone(), r.clone());
        Ok((key, r))
    }

    /// Appends to the room's history (when `keep`) and sends to every member, under the
    /// room's lock.
    fn fan_out(&self, room: &mut Room, ev: &Event, keep: bool) {
        let e = Encoded::new(ev);
        for m in room.members.values() {
            self.deliver(m, &e);
        }
        if keep && self.cfg.history > 0 {
            if room.history.len() >= self.cfg.history {
                room.history.pop_front();
            }
            room.history.push_back(e);
        }
    }

    pub(crate) fn join(&self, m: &Arc<Member>, raw: &str) -> Result<(), ProtoError> {
        let name = room_name(raw)?;
        {
            let mut rooms = m.rooms.lock();
            if let Some(i) = rooms.iter().position(|r| **r == *name) {
                // Already in: it becomes the current room.
                let r = rooms.remove(i);
                rooms.push(r);
                drop(rooms);
                return self.who(m, Some(&name));
            }
            if rooms.len() >= self.cfg.max_rooms_per_member {
                return Err(ProtoError::new(
                    "too_many_rooms",
                    format!("at most {} rooms at once", self.cfg.max_rooms_per_member),
                ));
            }
        }
        loop {
            let (key, room) = self.room_entry(&name, true)?;
            let mut r = room.lock();
            if r.removed {
                // The last member's leave took it out of the table after the lookup: joining
                // it would leave the joiner alone in a room nobody else finds. Look again
                // (the table then has a new room, or one another joiner made).
                continue;
            }
            m.rooms.lock().push(key);
            if r.members.insert(m.id(), m.clone()).is_none() {
                r.list(&m.nick_shared(), m.id());
            }
            self.tell_listing(m, Listing::Joined, &name, &r);
            // The history, then live events: both under the room's lock, so nothing is missed
            // or repeated between them.
            for e in &r.history {
                self.deliver(m, e);
            }
            if r.members.len() <= self.cfg.presence_max {
                let ev = Event::Join { room: name, nick: m.nick(), ts: now_ms() };
                self.fan_out(&mut r, &ev, false);
            }
            return Ok(());
        }
    }

    /// Leaves `name` (or the current room); `tell` answers the member.
    pub(crate) fn leave(&self, m: &Arc<Member>, raw: Option<&str>) -> Result<(), ProtoError> {
        let name = self.which_room(m, raw)?;
        m.rooms.lock().retain(|r| **r != *name);
        self.part(m, &name, true);
        Ok(())
    }

    fn part(&self, m: &Arc<Member>, name: &str, answer: bool) {
        let Ok(room) = self.room(name, false) else { return };
        let mut r = room.lock();
        if r.members.remove(&m.id()).is_none() {
            return;
        }
        r.unlist(m.id());
        if answer {
            self.tell(m, &Event::Left { room: name.to_owned() });
        }
        if r.members.len() < self.cfg.presence_max {
            let ev = Event::Leave { room: name.to_owned(), nick: m.nick(), ts: now_ms() };
            self.fan_out(&mut r, &ev, false);
        }
        let empty = r.members.is_empty();
        drop(r);
        if empty && name != self.cfg.default_room {
            let mut rooms = self.rooms.lock();
            // Still empty (checked again under the table's lock: a join may have come). A
            // joiner that looked it up before this and locks it after sees `removed`.
            let gone = rooms.get(name).is_some_and(|r| {
                let mut r = r.lock();
                r.removed = r.members.is_empty();
                r.removed
            });
            if gone {
                rooms.remove(name);
            }
        }
    }

    fn which_room(&self, m: &Member, raw: Option<&str>) -> Result<String, ProtoError> {
        let rooms = m.rooms.lock();
        let name = match raw {
            Some(r) => room_name(r)?,
            None => rooms
                .last()
                .map(|r| r.to_string())
                .ok_or_else(|| ProtoError::new("not_in_room", "join a room first (/join ROOM)"))?,
        };
        if !rooms.iter().any(|r| **r == *name) {
            return Err(ProtoError::new("not_in_room", format!("you are not in #{name}")));
        }
        Ok(name)
    }

    pub(crate) fn say(
        &self,
        m: &Arc<Member>,
        raw: Option<&str>,
        text: String,
    ) -> Result<(), ProtoError> {
        let name = self.which_room(m, raw)?;
        let room = self.room(&name, false)?;
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        let ev = Event::Msg { room: name, from: m.nick(), text, ts: now_ms() };
        self.fan_out(&mut room.lock(), &ev, true);
        Ok(())
    }

    pub(crate) fn pm(&self, m: &Arc<Member>, to: &str, text: String) -> Result<(), ProtoError> {
        let target = self
            .nicks
            .lock()
            .get(to.to_ascii_lowercase().as_str())
            .cloned()
            .ok_or_else(|| ProtoError::new("no_such_nick", format!("nobody is called {to}")))?;
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        let ev = Event::Pm { from: m.nick(), to: target.nick(), text, ts: now_ms() };
        let e = Encoded::new(&ev);
        self.deliver(&target, &e);
        if !Arc::ptr_eq(&target, m) {
            self.deliver(m, &e);
        }
        Ok(())
    }

    pub(crate) fn nick(&self, m: &Arc<Member>, new: &str) -> Result<(), ProtoError> {
        valid_nick(new)?;
        let old = {
            let mut nicks = self.nicks.lock();
            let new: Arc<str> = new.into();
            let key = nick_key(&new);
            match nicks.get(&key) {
                Some(x) if Arc::ptr_eq(x, m) => {}
                Some(_) => {
                    return Err(ProtoError::new("nick_taken", format!("{new} is taken")));
                }
                None => {}
            }
            let mut nick = m.nick.lock();
            let old = std::mem::replace(&mut *nick, new);
            nicks.remove(old.to_ascii_lowercase().as_str());
            nicks.insert(key, m.clone());
            old.to_string()
        };
        self.tell(m, &Event::Welcome { nick: new.to_owned() });
        let rooms = m.rooms.lock().clone();
        for name in rooms {
            if let Ok(room) = self.room(&name, false) {
                let ev = Event::Nick {
                    room: name.to_string(),
                    old: old.clone(),
                    new: new.to_owned(),
                    ts: now_ms(),
                };
                let mut r = room.lock();
                if r.members.contains_key(&m.id()) {
                    // What it is called now (a later rename may have run already).
                    r.list(&m.nick_shared(), m.id());
                }
                self.fan_out(&mut r, &ev, false);
            }
        }
        Ok(())
    }

    pub(crate) fn rooms(&self, m: &Member) {
        let rooms: Vec<(Arc<str>, Arc<Mutex<Room>>)> =
            self.rooms.lock().iter().map(|(n, r)| (n.clone(), r.clone())).collect();
        let mut list: Vec<(String, usize)> =
            rooms.into_iter().map(|(n, r)| (n.to_string(), r.lock().members.len())).collect();
        list.sort();
        self.tell(m, &Event::Rooms(list));
    }

    pub(crate) fn who(&self, m: &Member, raw: Option<&str>) -> Result<(), ProtoError> {
        let name = match raw {
            Some(r) => room_name(r)?,
            None => self.which_room(m, None)?,
        };
        let room = self.room(&name, false)?;
        self.tell_listing(m, Listing::Members, &name, &room.lock());
        Ok(())
    }

    /// Every member of `kind`, for the server's goodbyes.
    pub(crate) fn members_of(&self, kind: Kind) -> Vec<Arc<Member>> {
        self.nicks.lock().values().filter(|m| m.kind == kind).cloned().collect()
    }

    /// Panics unless every room's listing is the first names of its members (tests).
    #[cfg(test)]
    pub(crate) fn check_listings(&self) {
        let rooms: Vec<(Arc<str>, Arc<Mutex<Room>>)> =
            self.rooms.lock().iter().map(|(n, r)| (n.clone(), r.clone())).collect();
        for (name, room) in rooms {
            let r = room.lock();
            let want = first_nicks(r.members.values(), MAX_LISTED);
            assert_eq!(r.listed, want, "room {name} ({} members)", r.members.len());
        }
    }

    /// Whether the room table's `name` has `m` among its members (tests).
    #[cfg(test)]
    pub(crate) fn in_room(&self, m: &Member, name: &str) -> bool {
        let room = self.rooms.lock().get(name).cloned();
        room.is_some_and(|r| r.lock().members.contains_key(&m.id()))
    }

    /// Members now.
    pub(crate) fn member_count(&self) -> usize {
        self.nicks.lock().len()
    }
}
