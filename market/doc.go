// Package market is the marketplace: provider machines, signed offers gossiped on
// /virtuoso/offers/1 and the offer book every node keeps, the configurations catalog, search and
// ranking, market averages, storing a VM on a provider (a signed lease) and controlling it.
package market
