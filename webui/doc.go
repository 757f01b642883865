// Package webui is the node owner's local web interface: buyer and provider pages, the JSON API
// they use, and the console websocket that noVNC connects to. It listens on loopback only.
package webui
