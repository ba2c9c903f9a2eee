package fsm

// JournalLimit is how many changes a node's journal keeps unread.
const JournalLimit = journalLimit

// NumTables is how many tables there are.
const NumTables = numTables
