"""
``nym-directory``: nodes publish signed descriptors, and it serves per epoch
a network document signed with its own key (``doc/directory.md``).
"""
