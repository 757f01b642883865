// Package ledger keeps who owes whom: signed hash-chained entries, balances in integer
// micro-units, the billing rules of storage and running periods, the mirror protocol, and the
// coordinator that settles them as a replicated state machine.
package ledger
