//! A vector that grows by fixed chunks: no doubling, so a slab of 10,000 in-flight operations
//! does not carry 6,000 empty slots of slack (memory per idle connection), and elements never
//! move when it grows. Used for the drivers' slot tables and the timer wheel's entries: tables
//! with one element per operation in flight.

const CHUNK: usize = 256;

pub(crate) struct ChunkVec<T> {
    chunks: Vec<Box<[T]>>,
    len: usize,
}

impl<T> ChunkVec<T> {
    pub(crate) const fn new() -> Self {
        ChunkVec { chunks: Vec::new(), len: 0 }
    }

    /// Appends `make()`, returning its index.
    pub(crate) fn push_with(&mut self, make: impl Fn() -> T) -> usize {
        if self.len == self.chunks.len() * CHUNK {
            self.chunks.push((0..CHUNK).map(|_| make()).collect());
        } else {
            let i = self.len;
            self.chunks[i / CHUNK][i % CHUNK] = make();
        }
        self.len += 1;
        self.len - 1
    }

    /// Elements pushed.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Elements the chunks hold, used or not.
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        if i < self.len { Some(&mut self.chunks[i / CHUNK][i % CHUNK]) } else { None }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flat_map(|c| c.iter()).take(self.len)
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.chunks.iter_mut().flat_map(|c| c.iter_mut()).take(self.len)
    }

    /// Removes every element.
    pub(crate) fn take_all(&mut self) -> Vec<T> {
        let len = std::mem::take(&mut self.len);
        std::mem::take(&mut self.chunks).into_iter().flat_map(Vec::from).take(len).collect()
    }
}

impl<T> std::ops::Index<usize> for ChunkVec<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        assert!(i < self.len, "index {i} out of bounds ({})", self.len);
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T> std::ops::IndexMut<usize> for ChunkVec<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        assert!(i < self.chunks.len() * CHUNK, "index {i} out of bounds ({})", self.len);
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}
