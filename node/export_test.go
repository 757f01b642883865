package node

// APIReadTimeout is how long the API server gives a request to be read, for the tests that
// outlast it.
const APIReadTimeout = apiReadTimeout
