package node

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// MaxAnswerSize caps an API answer read by the client.
const MaxAnswerSize = 64 << 20

// Client talks to a running node's API; it finds it from the node's home alone.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// Dial returns a client for the node running on home.
func Dial(home Home) (*Client, error) {
	addr, err := home.APIAddr()
	if err != nil {
		return nil, err
	}
	token, err := home.Token()
	if err != nil {
		return nil, err
	}
	return &Client{base: "http://" + addr, token: token, http: &http.Client{Timeout: 10 * time.Minute}}, nil
}

// Get fetches path into out.
func (c *Client) Get(ctx context.Context, path string, out any) error {
	return c.Do(ctx, http.MethodGet, path, nil, out)
}

// Post sends in as JSON to path and decodes the answer into out (either may be nil).
func (c *Client) Post(ctx context.Context, path string, in, out any) error {
	return c.Do(ctx, http.MethodPost, path, in, out)
}

// Do makes one API call.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return c.unreachable(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswerSize))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode >= 300 {
		return answerError(resp, raw)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("decode answer of %s: %w", path, err)
	}
	return nil
}

// MaxStreamLine caps one line of a streamed answer.
const MaxStreamLine = 1 << 20

// Stream makes a GET whose answer is newline-delimited JSON (GET /v1/events?follow=true) and
// calls fn with each line as it comes, until the node ends the answer (nil), ctx is done (its
// error) or fn fails (its error). It has no time limit of its own.
func (c *Client) Stream(ctx context.Context, path string, fn func(line []byte) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	untimed := *c.http
	untimed.Timeout = 0
	resp, err := untimed.Do(req)
	if err != nil {
		return c.unreachable(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		raw, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswerSize))
		if err != nil {
			return fmt.Errorf("read answer: %w", err)
		}
		return answerError(resp, raw)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), MaxStreamLine)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		if err := fn(sc.Bytes()); err != nil {
			return err
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read the answer of %s: %w", path, err)
	}
	return nil
}

// unreachable is the error of a request the node did not answer.
func (c *Client) unreachable(err error) error {
	return fmt.Errorf("node API at %s does not answer (%w): is `virtuoso node` running on this home?", c.base, err)
}

// answerError is the error of an answer with an error status; raw is its body.
func answerError(resp *http.Response, raw []byte) error {
	var eb ErrorBody
	if json.Unmarshal(raw, &eb) == nil && eb.Message != "" {
		return WithCode(resp.StatusCode, cmp.Or(eb.Code, statusCode(resp.StatusCode)), errors.New(eb.Message))
	}
	return WithCode(resp.StatusCode, statusCode(resp.StatusCode), fmt.Errorf("%s %s: %s", resp.Request.Method, resp.Request.URL.RequestURI(), resp.Status))
}
