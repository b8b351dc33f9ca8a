"""
A fixed-size Bloom filter over uniformly random replay tags.
"""

TAG_SIZE = 16  # bytes; a Sphinx replay tag
_SLICE_BITS = 32


class TagFilter:
    """
    A Bloom filter for 16-byte replay tags, in a ``bytearray`` of fixed size.

    Written by hand because no well-kept library offers a Bloom filter
    without pulling in a hashing scheme we do not need: Sphinx tags are
    already uniformly random, so each bit index is simply a 32-bit slice of
    the tag (four slices, hence at most four "hash functions"), reduced
    modulo the filter's size.  Memory use never grows, however many tags
    are added; the price is a false "maybe seen" now and then, which the
    owner resolves against its durable table.
    """

    def __init__(self, size_bytes=4 * 1024 * 1024, hash_count=4):
        """
        :param int size_bytes: size of the bit array; with the default 4 MiB
            and four indices, one million tags give about one false
            "maybe" in 6,000 lookups.
        :param int hash_count: bit indices per tag, 1 to 4.
        """
        if not isinstance(size_bytes, int) or size_bytes < 1:
            raise ValueError("size_bytes must be a positive integer")
        if size_bytes * 8 > 2**_SLICE_BITS:
            raise ValueError("size_bytes must be at most 512 MiB")
        if hash_count not in (1, 2, 3, 4):
            raise ValueError("hash_count must be 1, 2, 3 or 4")
        self._bits = bytearray(size_bytes)
        self._size_bits = size_bytes * 8
        self._shifts = tuple(range(0, hash_count * _SLICE_BITS, _SLICE_BITS))
        self.count = 0

    def _indices(self, tag):
        if type(tag) is not bytes or len(tag) != TAG_SIZE:
            raise ValueError("a replay tag is 16 bytes")
        value = int.from_bytes(tag, "little")
        size = self._size_bits
        return [((value >> shift) & 0xFFFFFFFF) % size for shift in self._shifts]

    def add(self, tag):
        """
        Set the bits of ``tag``.

        :returns: ``True`` if at least one bit was clear, that is if the
            tag was certainly not in the filter before.
        """
        if type(tag) is not bytes or len(tag) != TAG_SIZE:
            raise ValueError("a replay tag is 16 bytes")
        # _indices inlined: this runs once per packet on the reactor thread.
        bits, size = self._bits, self._size_bits
        value = int.from_bytes(tag, "little")
        was_new = False
        for shift in self._shifts:
            index = ((value >> shift) & 0xFFFFFFFF) % size
            byte, mask = index >> 3, 1 << (index & 7)
            if not bits[byte] & mask:
                bits[byte] |= mask
                was_new = True
        self.count += 1
        return was_new

    def __contains__(self, tag):
        """
        :returns: ``False`` if ``tag`` was certainly never added; ``True``
            if it may have been.
        """
        bits = self._bits
        for index in self._indices(tag):
            if not bits[index >> 3] & (1 << (index & 7)):
                return False
        return True

    def clear(self):
        """
        Forget every tag.
        """
        self._bits = bytearray(len(self._bits))
        self.count = 0

    @property
    def size_bytes(self):
        """
        The fixed size of the bit array, in bytes.
        """
        return len(self._bits)
