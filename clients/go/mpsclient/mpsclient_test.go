package mpsclient

// The converter tests run on their own. The end-to-end tests need a running server and a
// video in its storage, named by:
//   MPS_SNAPSHOT_TARGET  the server, e.g. 127.0.0.1:50051
//   MPS_TEST_BUCKET      a bucket holding the video; outputs are written there too
//   MPS_TEST_OBJECT      the video's object key (at least 4 s long)
// clients/go/run.sh builds and runs them; tests/test_go_client.py does so against the
// in-process test server.

import (
	"context"
	"errors"
	"math"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	pb "mps-snapshot/gen/mpssnapshotv1"
)

func TestFromMPSAcceptsMPSStrings(t *testing.T) {
	req := &pb.SubmitSnapshotJobRequest{}
	doc := `{"Action": "SubmitSnapshotJob",
	  "Input": "{\"Bucket\":\"in\",\"Location\":\"oss-cn-hangzhou\",\"Object\":\"a%2Fb.mp4\"}",
	  "SnapshotConfig": {"OutputFile": {"Bucket": "out", "Object": "{Count}.jpg"},
	    "Time": "1000", "Interval": "1", "Num": "3", "Width": 320,
	    "TileOut": {"IsKeepCellPic": "false", "Lines": "2"}, "SubOut": {"IsSptFrag": "TRUE"},
	    "TimeArray": {"TimePointList": "[1500, 2500.25]"}},
	  "UserData": "job-1"}`
	if err := FromMPS([]byte(doc), req); err != nil {
		t.Fatal(err)
	}
	want := &pb.SubmitSnapshotJobRequest{
		Input: &pb.OSSFile{Bucket: "in", Location: "oss-cn-hangzhou", Object: "a%2Fb.mp4"},
		SnapshotConfig: &pb.SnapshotConfig{
			OutputFile: &pb.OSSFile{Bucket: "out", Object: "{Count}.jpg"},
			Time:       proto.Int64(1000), Interval: proto.Int64(1), Num: proto.Int32(3), Width: proto.Int32(320),
			TileOut:   &pb.TileOut{IsKeepCellPic: proto.Bool(false), Lines: proto.Int32(2)},
			SubOut:    &pb.SubOut{IsSptFrag: proto.Bool(true)},
			TimeArray: &pb.TimeArray{TimePointList: []float64{1500, 2500.25}},
		},
		UserData: "job-1",
	}
	if !proto.Equal(req, want) {
		t.Fatalf("got %v\nwant %v", req, want)
	}
}

func TestFromMPSNamesAndLists(t *testing.T) {
	q := &pb.QuerySnapshotJobListRequest{}
	if err := FromMPS([]byte(`{"SnapshotJobIds": "a, b,c", "maximum_page_size": "5", "pipelineId": "p"}`), q); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(q.SnapshotJobIds, []string{"a", "b", "c"}) || q.GetMaximumPageSize() != 5 || q.PipelineId != "p" {
		t.Fatalf("got %v", q)
	}
	out, err := ToMPS(&pb.SnapshotJob{Id: "x", State: "Success", Images: []*pb.SnapshotImage{{Object: "a.jpg", Time: 1000}}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"Images"`) || !strings.Contains(string(out), `"Object"`) {
		t.Fatalf("not MPS names: %s", out)
	}
}

func TestFromMPSRefusesTyposAndBadValues(t *testing.T) {
	for doc, want := range map[string]string{
		`{"SnapshotConfig": {"Tiem": "1"}}`:                         "SnapshotConfig.Tiem",
		`{"SnapshotConfig": {"TileOut": {"IsKeepCellPic": "yes"}}}`: `"true" or "false"`,
		`{"SnapshotConfig": {"Num": "three"}}`:                      "Num",
	} {
		err := FromMPS([]byte(doc), &pb.SubmitSnapshotJobRequest{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want an error naming %s", doc, err, want)
		}
	}
}

// server returns a connected client and the test video, or skips the test.
func server(t *testing.T) (*Client, string, string) {
	t.Helper()
	target, bucket, object := os.Getenv("MPS_SNAPSHOT_TARGET"), os.Getenv("MPS_TEST_BUCKET"), os.Getenv("MPS_TEST_OBJECT")
	if target == "" || bucket == "" || object == "" {
		t.Skip("set MPS_SNAPSHOT_TARGET, MPS_TEST_BUCKET and MPS_TEST_OBJECT to run against a server")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bucket, object
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestSyncSnapshot(t *testing.T) {
	c, bucket, object := server(t)
	job, err := c.Snapshot(ctxFor(t, 30*time.Second), SnapshotArgs{
		Bucket: bucket, Object: object, OutputObject: "go/sync/{FileName}-{SnapshotTime}.jpg", TimeMs: 1000, Width: 320,
	})
	if err != nil {
		t.Fatal(err)
	}
	if job.State != "Success" || job.Count != 1 || len(job.Images) != 1 {
		t.Fatalf("job %v", job)
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(job.Id) {
		t.Errorf("job id %q", job.Id)
	}
	img := job.Images[0]
	if !regexp.MustCompile(`^go/sync/.+-1000\.jpg$`).MatchString(img.Object) || img.Width != 320 || math.Abs(img.Time-1000) >= 50 {
		t.Errorf("image %v", img)
	}
}

func TestAsyncJobFromMPSJSONWatchedToTheEnd(t *testing.T) {
	c, bucket, object := server(t)
	ctx := ctxFor(t, 60*time.Second)
	doc := `{"Input": {"Bucket": "` + bucket + `", "Location": "oss-cn-hangzhou", "Object": "` + object + `"},
	  "SnapshotConfig": {"OutputFile": {"Bucket": "` + bucket + `", "Location": "oss-cn-hangzhou", "Object": "go/seq/{Count}.jpg"},
	    "Time": "1000", "Interval": "1", "Num": "3"},
	  "UserData": "go-client-1"}`
	resp, err := c.SubmitMPS(ctx, []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	submitted := resp.GetSnapshotJob()
	if resp.RequestId == "" || submitted.UserData != "go-client-1" || (submitted.State != "Submitted" && submitted.State != "Snapshoting") {
		t.Fatalf("response %v", resp)
	}
	var kinds []pb.SnapshotJobEvent_Kind
	var done []int32
	final, err := c.Watch(ctx, submitted.Id, func(e *pb.SnapshotJobEvent) {
		kinds = append(kinds, e.Kind)
		if e.Kind == pb.SnapshotJobEvent_KIND_IMAGE_WRITTEN {
			done = append(done, e.GetProgress().GetImagesDone())
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if kinds[0] != pb.SnapshotJobEvent_KIND_INITIAL || kinds[len(kinds)-1] != pb.SnapshotJobEvent_KIND_STATE_CHANGED {
		t.Errorf("event kinds %v", kinds)
	}
	if !reflect.DeepEqual(done, []int32{1, 2, 3}) {
		t.Errorf("images done %v", done)
	}
	if final.State != "Success" || final.Count != 3 {
		t.Fatalf("final %v", final)
	}
	var objects []string
	var requested []float64
	for _, img := range final.Images {
		objects = append(objects, img.Object)
		requested = append(requested, img.RequestedTime)
	}
	if !reflect.DeepEqual(objects, []string{"go/seq/00001.jpg", "go/seq/00002.jpg", "go/seq/00003.jpg"}) ||
		!reflect.DeepEqual(requested, []float64{1000, 2000, 3000}) {
		t.Errorf("images %v", final.Images)
	}
	missing := strings.Repeat("0", 32)
	listed, err := c.Query(ctx, &pb.QuerySnapshotJobListRequest{SnapshotJobIds: []string{submitted.Id, missing}})
	if err != nil {
		t.Fatal(err)
	}
	if len(listed.SnapshotJobList) != 1 || listed.SnapshotJobList[0].State != "Success" ||
		!reflect.DeepEqual(listed.NonExistSnapshotJobIds, []string{missing}) {
		t.Errorf("query %v", listed)
	}
}

func TestOutputsBeyondMPS(t *testing.T) {
	c, bucket, object := server(t)
	ctx := ctxFor(t, 60*time.Second)
	// Typed fields: a PNG cropped to a square at 25 % of the video, via the generated code.
	req := &pb.SubmitSnapshotJobRequest{
		Input: &pb.OSSFile{Bucket: bucket, Location: "oss-cn-hangzhou", Object: object},
		SnapshotConfig: &pb.SnapshotConfig{
			OutputFile:  &pb.OSSFile{Bucket: bucket, Location: "oss-cn-hangzhou", Object: "go/beyond/crop.png"},
			TimePercent: proto.Float64(25),
			Width:       proto.Int32(120),
			Height:      proto.Int32(120),
			Fit:         proto.String("crop"),
			ToneMap:     proto.Bool(true),
		},
	}
	resp, err := c.Submit(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	img := resp.GetSnapshotJob().GetImages()[0]
	if img.Object != "go/beyond/crop.png" || img.Width != 120 || img.Height != 120 || img.RequestedTime != 2500 {
		t.Errorf("image %v", img)
	}
	// MPS JSON: WebP sprites with a WebVTT track over the whole video, and an animated WebP.
	doc := `{"Input": {"Bucket": "` + bucket + `", "Location": "oss-cn-hangzhou", "Object": "` + object + `"},
	  "SnapshotConfig": {"OutputFile": {"Bucket": "` + bucket + `", "Location": "oss-cn-hangzhou", "Object": "go/beyond/{Count}.webp"},
	    "TileOutputFile": {"Bucket": "` + bucket + `", "Location": "oss-cn-hangzhou", "Object": "go/beyond/sprite.webp"},
	    "TileOut": {"AutoCells": "6", "CellWidth": "64", "CellHeight": "36"}, "Format": "webp,vtt", "Quality": "70",
	    "AnimatedOut": {"StartPercent": "10", "Duration": "2000", "Fps": "4", "Height": "72"},
	    "AnimatedOutputFile": {"Bucket": "` + bucket + `", "Location": "oss-cn-hangzhou", "Object": "go/beyond/preview.webp"}}}`
	submitted, err := c.SubmitMPS(ctx, []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	final, err := c.Watch(ctx, submitted.GetSnapshotJob().Id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if final.State != "Success" || final.Count != 6 || final.TileCount != 1 || final.WebVttObject == "" {
		t.Fatalf("final %v", final)
	}
	if s := final.Sprites[0]; s.Width != 3*64 || s.Height != 2*36 || s.CellCount != 6 {
		t.Errorf("sprite %v", s)
	}
	if a := final.GetAnimated(); a.GetFormat() != "webp" || a.GetFrameCount() != 8 || a.GetWidth() != 128 || a.GetHeight() != 72 {
		t.Errorf("animated %v", a)
	}
}

func TestErrorCodeFromStatusDetails(t *testing.T) {
	c, bucket, object := server(t)
	ctx := ctxFor(t, 30*time.Second)

	_, err := c.Snapshot(ctx, SnapshotArgs{Bucket: bucket, Object: "no/such.mp4", OutputObject: "go/x.jpg"})
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v, want *mpsclient.Error", err)
	}
	if e.Code != "InvalidParameter.ResourceNotFound" || e.Status != codes.NotFound || e.RequestID == "" ||
		!strings.Contains(e.Message, "RequestId") {
		t.Errorf("error %+v", e)
	}

	_, err = c.Snapshot(ctx, SnapshotArgs{Bucket: bucket, Object: object, OutputObject: "go/x.jpg", Width: 4})
	if !errors.As(err, &e) || e.Code != "InvalidParameter.OutOfRange" || e.Status != codes.InvalidArgument ||
		len(e.Violations) != 1 || e.Violations[0].Field != "snapshot_config.width" {
		t.Errorf("error %+v", err)
	}

	// A finished job cannot be cancelled; an unknown one cannot be watched.
	job, err := c.Snapshot(ctx, SnapshotArgs{Bucket: bucket, Object: object, OutputObject: "go/cancel.jpg"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err = c.Cancel(ctx, job.Id); Code(err) != "IncorrectJobState" {
		t.Errorf("cancel: %v", err)
	}
	if _, err = c.Watch(ctx, strings.Repeat("f", 32), nil); Code(err) != "InvalidParameter.ResourceNotFound" {
		t.Errorf("watch: %v", err)
	}
}

func TestPipelines(t *testing.T) {
	c, _, _ := server(t)
	ctx := ctxFor(t, 30*time.Second)
	added, err := c.AddPipeline(ctx, &pb.AddPipelineRequest{Name: "go-pipeline", MaxConcurrentJobs: proto.Int32(1)})
	if err != nil {
		t.Fatal(err)
	}
	id := added.GetPipeline().GetId()
	if added.GetPipeline().GetState() != "Active" {
		t.Errorf("added %v", added)
	}
	updated, err := c.UpdatePipeline(ctx, &pb.UpdatePipelineRequest{PipelineId: id, Name: "go-pipeline-2", State: "Paused"})
	if err != nil || updated.GetPipeline().GetState() != "Paused" {
		t.Fatalf("update: %v %v", updated, err)
	}
	found, err := c.QueryPipelineList(ctx, id)
	if err != nil || len(found.PipelineList) != 1 || found.PipelineList[0].Name != "go-pipeline-2" {
		t.Fatalf("query: %v %v", found, err)
	}
	page, err := c.SearchPipeline(ctx, &pb.SearchPipelineRequest{State: "Paused", PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	seen := false
	for _, p := range page.PipelineList {
		seen = seen || p.Id == id
	}
	if !seen {
		t.Errorf("search: %v", page)
	}
	if deleted, err := c.DeletePipeline(ctx, id); err != nil || deleted.PipelineId != id {
		t.Fatalf("delete: %v %v", deleted, err)
	}
	if _, err := c.DeletePipeline(ctx, id); Code(err) != "InvalidParameter.ResourceNotFound" {
		t.Errorf("delete again: %v", err)
	}
}
