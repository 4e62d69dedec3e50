package peertest

import (
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// No Route 53 server runs here, so this is one for the calls internal/address makes: an HTTP
// endpoint on loopback speaking Route 53's REST-XML protocol (API version 2013-04-01) as its
// API Reference pages ChangeResourceRecordSets (POST /2013-04-01/hostedzone/{Id}/rrset/ with a
// ChangeResourceRecordSetsRequest body), ListResourceRecordSets (GET
// /2013-04-01/hostedzone/{Id}/rrset?name=&type=&maxitems=) and GetChange (GET
// /2013-04-01/change/{Id}) show them: ChangeInfo with Id /change/C..., Status PENDING until the change has been read back a set
// number of times, then INSYNC, SubmittedAt; errors in the ErrorResponse shape (<ErrorResponse>
// <Error><Type>Sender</Type><Code>NoSuchHostedZone</Code><Message>...</Message></Error>
// <RequestId>...</RequestId></ErrorResponse>). It verifies the SigV4 signature (a wrong secret
// is 403 SignatureDoesNotMatch, an unknown key 403 InvalidClientTokenId), keeps each zone's A
// records, and refuses a name outside its zone with InvalidChangeBatch as Route 53 does.

// Route53 is the Route 53 endpoint.
type Route53 struct {
	URL                  string
	AccessKey, SecretKey string

	mu    sync.Mutex
	calls []Route53Call
	zones map[string]*R53Zone
	// changes counts the GetChange reads of each change; PendingReads is how many of them
	// answer PENDING before INSYNC (negative: never INSYNC).
	changes      map[string]int
	PendingReads int
	deny         map[string]bool
	n            int
}

// R53Zone is one hosted zone: its name (example.internal) and its A records (name -> value,
// TTL).
type R53Zone struct {
	ID, Name string
	Records  map[string]R53Record
}

// R53Record is one A record set.
type R53Record struct {
	Values []string
	TTL    int
}

// Route53Call is one request that passed the signature check.
type Route53Call struct {
	Method, Path string
	// Action is the operation: ChangeResourceRecordSets or GetChange.
	Action string
	Query  string
	Body   string
}

// StartRoute53 serves no zones on a free loopback port, accepting requests signed with the
// given credentials. Each change is PENDING at its first GetChange and INSYNC from the second.
func StartRoute53(t testing.TB, access, secret string) *Route53 {
	t.Helper()
	r := &Route53{AccessKey: access, SecretKey: secret, zones: map[string]*R53Zone{}, changes: map[string]int{}, PendingReads: 1, deny: map[string]bool{}}
	srv := httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(srv.Close)
	r.URL = srv.URL
	return r
}

// AddZone creates a hosted zone.
func (r *Route53) AddZone(id, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.zones[id] = &R53Zone{ID: id, Name: strings.TrimSuffix(name, ".") + ".", Records: map[string]R53Record{}}
}

// SetPendingReads sets how many GetChange reads answer PENDING (negative: never INSYNC).
func (r *Route53) SetPendingReads(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.PendingReads = n
}

// Deny answers AccessDenied to an operation.
func (r *Route53) Deny(action string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deny[action] = true
}

// Record returns a zone's A record for name (with its final dot), ok false when absent.
func (r *Route53) Record(zone, name string) (R53Record, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	z := r.zones[zone]
	if z == nil {
		return R53Record{}, false
	}
	rec, ok := z.Records[strings.TrimSuffix(name, ".")+"."]
	return rec, ok
}

// Calls returns the requests so far, optionally only those of some operations.
func (r *Route53) Calls(actions ...string) []Route53Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Route53Call
	for _, c := range r.calls {
		if len(actions) == 0 || contains(actions, c.Action) {
			out = append(out, c)
		}
	}
	return out
}

const r53NS = "https://route53.amazonaws.com/doc/2013-04-01/"

// changeRequest is the ChangeResourceRecordSetsRequest document.
type changeRequest struct {
	XMLName xml.Name `xml:"ChangeResourceRecordSetsRequest"`
	Changes []struct {
		Action string `xml:"Action"`
		Set    struct {
			Name    string   `xml:"Name"`
			Type    string   `xml:"Type"`
			TTL     int      `xml:"TTL"`
			Values  []string `xml:"ResourceRecords>ResourceRecord>Value"`
			AliasTo string   `xml:"AliasTarget>DNSName"`
		} `xml:"ResourceRecordSet"`
	} `xml:"ChangeBatch>Changes>Change"`
}

func (r *Route53) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	if err := verifySigV4(req, body, "route53", "us-east-1", r.AccessKey, r.SecretKey); err != nil {
		if errors.Is(err, errUnknownKey) {
			r53Error(w, 403, "InvalidClientTokenId", "The security token included in the request is invalid.")
			return
		}
		r53Error(w, 403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")
		return
	}
	path := strings.TrimSuffix(req.URL.Path, "/")
	action := ""
	switch {
	case req.Method == http.MethodPost && strings.HasPrefix(path, "/2013-04-01/hostedzone/") && strings.HasSuffix(path, "/rrset"):
		action = "ChangeResourceRecordSets"
	case req.Method == http.MethodGet && strings.HasPrefix(path, "/2013-04-01/hostedzone/") && strings.HasSuffix(path, "/rrset"):
		action = "ListResourceRecordSets"
	case req.Method == http.MethodGet && strings.HasPrefix(path, "/2013-04-01/change/"):
		action = "GetChange"
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, Route53Call{Method: req.Method, Path: req.URL.Path, Query: req.URL.RawQuery, Action: action, Body: string(body)})
	if action == "" {
		r53Error(w, 404, "UnknownOperationException", "no operation at "+req.Method+" "+req.URL.Path)
		return
	}
	if r.deny[action] {
		r53Error(w, 403, "AccessDenied", "User: arn:aws:sts::123456789012:assumed-role/circleci-services/i-x is not authorized to perform: route53:"+action+" on resource: arn:aws:route53:::"+strings.TrimPrefix(path, "/2013-04-01/")+" because no identity-based policy allows the route53:"+action+" action")
		return
	}
	switch action {
	case "ChangeResourceRecordSets":
		id := strings.TrimSuffix(strings.TrimPrefix(path, "/2013-04-01/hostedzone/"), "/rrset")
		z := r.zones[id]
		if z == nil {
			r53Error(w, 404, "NoSuchHostedZone", "No hosted zone found with ID: "+id)
			return
		}
		var cr changeRequest
		if err := xml.Unmarshal(body, &cr); err != nil || len(cr.Changes) == 0 {
			r53Error(w, 400, "InvalidInput", "the body is not a ChangeResourceRecordSetsRequest with changes")
			return
		}
		for _, c := range cr.Changes {
			name := strings.ToLower(strings.TrimSuffix(c.Set.Name, ".")) + "."
			if name != z.Name && !strings.HasSuffix(name, "."+z.Name) {
				r53InvalidBatch(w, fmt.Sprintf("RRSet with DNS name %s is not permitted in zone %s", name, z.Name))
				return
			}
			if c.Action != "UPSERT" && c.Action != "CREATE" && c.Action != "DELETE" {
				r53Error(w, 400, "InvalidInput", "Invalid XML ; unknown Action "+c.Action)
				return
			}
			if c.Set.Type != "A" || len(c.Set.Values) == 0 || c.Set.TTL < 0 {
				r53InvalidBatch(w, "this stand-in keeps A records with values and a TTL only")
				return
			}
			if _, exists := z.Records[name]; c.Action == "CREATE" && exists {
				r53InvalidBatch(w, fmt.Sprintf("Tried to create resource record set [name='%s', type='A'] but it already exists", name))
				return
			}
			if c.Action == "DELETE" {
				delete(z.Records, name)
				continue
			}
			z.Records[name] = R53Record{Values: c.Set.Values, TTL: c.Set.TTL}
		}
		r.n++
		cid := fmt.Sprintf("C%012dABCDEF", r.n)
		r.changes[cid] = 0
		r53OK(w, "ChangeResourceRecordSetsResponse", changeInfo(cid, "PENDING"))
	case "ListResourceRecordSets":
		r.list(w, req, strings.TrimSuffix(strings.TrimPrefix(path, "/2013-04-01/hostedzone/"), "/rrset"))
	case "GetChange":
		cid := strings.TrimPrefix(path, "/2013-04-01/change/")
		reads, ok := r.changes[cid]
		if !ok {
			r53Error(w, 404, "NoSuchChange", "A change with the specified change ID does not exist.")
			return
		}
		r.changes[cid] = reads + 1
		status := "INSYNC"
		if r.PendingReads < 0 || reads < r.PendingReads {
			status = "PENDING"
		}
		r53OK(w, "GetChangeResponse", changeInfo(cid, status))
	}
}

// list answers ListResourceRecordSets as its API Reference page shows it: the record sets from
// (name, type) on, at most maxitems, in Route 53's order, then IsTruncated and the next name and
// type. Route 53 orders names by their labels read from the right; the stand-in keeps A
// records only and orders by that reversed name too.
func (r *Route53) list(w http.ResponseWriter, req *http.Request, id string) {
	z := r.zones[id]
	if z == nil {
		r53Error(w, 404, "NoSuchHostedZone", "No hosted zone found with ID: "+id)
		return
	}
	q := req.URL.Query()
	start := strings.ToLower(strings.TrimSuffix(q.Get("name"), ".")) + "."
	if q.Get("type") != "" && q.Get("name") == "" {
		r53Error(w, 400, "InvalidInput", "The input is not valid: type requires name")
		return
	}
	max := 300
	if m := q.Get("maxitems"); m != "" {
		if _, err := fmt.Sscan(m, &max); err != nil || max < 1 {
			r53Error(w, 400, "InvalidInput", "maxitems must be a positive integer")
			return
		}
	}
	names := make([]string, 0, len(z.Records))
	for n := range z.Records {
		if q.Get("name") == "" || reversedName(n) >= reversedName(start) {
			names = append(names, n)
		}
	}
	sort.Slice(names, func(i, j int) bool { return reversedName(names[i]) < reversedName(names[j]) })
	var b strings.Builder
	for i, n := range names {
		if i == max {
			fmt.Fprintf(&b, "</ResourceRecordSets><IsTruncated>true</IsTruncated><NextRecordName>%s</NextRecordName><NextRecordType>A</NextRecordType><MaxItems>%d</MaxItems>", esc(n), max)
			r53OK(w, "ListResourceRecordSetsResponse", "<ResourceRecordSets>"+b.String())
			return
		}
		rec := z.Records[n]
		var vals strings.Builder
		for _, v := range rec.Values {
			fmt.Fprintf(&vals, "<ResourceRecord><Value>%s</Value></ResourceRecord>", esc(v))
		}
		fmt.Fprintf(&b, "<ResourceRecordSet><Name>%s</Name><Type>A</Type><TTL>%d</TTL><ResourceRecords>%s</ResourceRecords></ResourceRecordSet>", esc(n), rec.TTL, vals.String())
	}
	r53OK(w, "ListResourceRecordSetsResponse", fmt.Sprintf("<ResourceRecordSets>%s</ResourceRecordSets><IsTruncated>false</IsTruncated><MaxItems>%d</MaxItems>", b.String(), max))
}

// reversedName is a DNS name's labels from the right (internal.circleci.services.), the order
// Route 53 lists record sets in.
func reversedName(n string) string {
	labels := strings.Split(strings.TrimSuffix(n, "."), ".")
	slices.Reverse(labels)
	return strings.Join(labels, ".")
}

// SetRecord puts an A record in a zone, as another instance's UPSERT did.
func (r *Route53) SetRecord(zone, name string, ttl int, values ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.zones[zone].Records[strings.ToLower(strings.TrimSuffix(name, "."))+"."] = R53Record{Values: values, TTL: ttl}
}

func changeInfo(id, status string) string {
	return fmt.Sprintf("<ChangeInfo><Id>/change/%s</Id><Status>%s</Status><SubmittedAt>%s</SubmittedAt></ChangeInfo>",
		esc(id), status, time.Date(2026, 12, 1, 22, 0, 0, 0, time.UTC).Format(time.RFC3339))
}

func r53OK(w http.ResponseWriter, root, inner string) {
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-Requestid", reqID())
	fmt.Fprintf(w, `<?xml version="1.0"?>`+"\n"+`<%s xmlns="%s">%s</%s>`, root, r53NS, inner, root)
}

func r53Error(w http.ResponseWriter, status int, code, msg string) {
	id := reqID()
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-Requestid", id)
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0"?>`+"\n"+`<ErrorResponse xmlns="%s"><Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error><RequestId>%s</RequestId></ErrorResponse>`,
		r53NS, code, esc(msg), id)
}

// r53InvalidBatch is InvalidChangeBatch, whose body is its own shape (the API Reference's
// ChangeResourceRecordSets errors): a list of messages, not an ErrorResponse.
func r53InvalidBatch(w http.ResponseWriter, msg string) {
	id := reqID()
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-Requestid", id)
	w.WriteHeader(400)
	fmt.Fprintf(w, `<?xml version="1.0"?>`+"\n"+`<InvalidChangeBatch xmlns="%s"><Messages><Message>%s</Message></Messages><RequestId>%s</RequestId></InvalidChangeBatch>`,
		r53NS, esc(msg), id)
}
