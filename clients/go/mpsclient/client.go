// Package mpsclient is a Go client for the mps.snapshot.v1 gRPC API (self-hosted Alibaba
// Cloud MPS snapshot jobs).
//
// Requests can be the generated messages (package mps-snapshot/gen/mpssnapshotv1, made by
// clients/go/gen.sh) or MPS JSON exactly as MPS takes it: element names, scalars as strings
// ("Time": "1000", "IsKeepCellPic": "false"), nested objects as JSON text, id lists
// comma-separated (see FromMPS). Every failed call returns an *Error whose Code is the MPS
// error code from the google.rpc.ErrorInfo in the grpc-status-details-bin trailer.
package mpsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/golang/protobuf/ptypes"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	pb "mps-snapshot/gen/mpssnapshotv1"
)

// FieldViolation is one google.rpc.BadRequest field violation: the request field at fault,
// by its proto path ("snapshot_config.width"), and what to fix.
type FieldViolation struct {
	Field       string
	Description string
}

// Error is a failed call. Code is the MPS error code ("InvalidParameter.ResourceNotFound").
type Error struct {
	Code       string     // MPS error code, from google.rpc.ErrorInfo.reason
	Status     codes.Code // gRPC status code
	Message    string     // says what to fix; ends with "(RequestId: ...)"
	RequestID  string     // the call's request id
	JobID      string     // the job recorded as Fail, for a failed synchronous snapshot
	Violations []FieldViolation
	RetryDelay time.Duration // from google.rpc.RetryInfo; 0 when absent
}

func (e *Error) Error() string { return fmt.Sprintf("%s (%s): %s", e.Code, e.Status, e.Message) }

// AsError decodes a gRPC error's rich status into an *Error. It returns nil for a nil error
// and err unchanged when err carries no gRPC status.
func AsError(err error, trailer metadata.MD) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	out := &Error{Code: "InternalError", Status: st.Code(), Message: st.Message()}
	switch st.Code() {
	case codes.DeadlineExceeded:
		out.Code = "SnapshotTimeOut"
	case codes.Unavailable:
		out.Code = "ServiceUnavailable"
	}
	if ids := trailer.Get("x-request-id"); len(ids) > 0 {
		out.RequestID = ids[0]
	}
	// status.FromError has already parsed grpc-status-details-bin into st.Proto().
	for _, detail := range st.Proto().GetDetails() {
		info := &errdetails.ErrorInfo{}
		bad := &errdetails.BadRequest{}
		retry := &errdetails.RetryInfo{}
		switch {
		case ptypes.Is(detail, info):
			if ptypes.UnmarshalAny(detail, info) == nil {
				out.Code = info.GetReason()
				if id := info.GetMetadata()["requestId"]; id != "" {
					out.RequestID = id
				}
				out.JobID = info.GetMetadata()["jobId"]
			}
		case ptypes.Is(detail, bad):
			if ptypes.UnmarshalAny(detail, bad) == nil {
				for _, v := range bad.GetFieldViolations() {
					out.Violations = append(out.Violations, FieldViolation{v.GetField(), v.GetDescription()})
				}
			}
		case ptypes.Is(detail, retry):
			if ptypes.UnmarshalAny(detail, retry) == nil && retry.GetRetryDelay() != nil {
				if d, err := ptypes.Duration(retry.GetRetryDelay()); err == nil {
					out.RetryDelay = d
				}
			}
		}
	}
	return out
}

// Code is the MPS error code of err ("" when err is not an *Error).
func Code(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// Client calls SnapshotService and PipelineService on one connection.
type Client struct {
	conn      *grpc.ClientConn
	Snapshots pb.SnapshotServiceClient
	Pipelines pb.PipelineServiceClient
}

// Dial connects to target ("127.0.0.1:50051") without TLS.
func Dial(ctx context.Context, target string, opts ...grpc.DialOption) (*Client, error) {
	opts = append([]grpc.DialOption{grpc.WithInsecure()}, opts...)
	conn, err := grpc.DialContext(ctx, target, opts...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, Snapshots: pb.NewSnapshotServiceClient(conn), Pipelines: pb.NewPipelineServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// unary runs one call and turns its failure into an *Error.
func unary[Req, Resp any](ctx context.Context, call func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	var trailer metadata.MD
	resp, err := call(ctx, req, grpc.Trailer(&trailer))
	return resp, AsError(err, trailer)
}

// Submit calls SubmitSnapshotJob.
func (c *Client) Submit(ctx context.Context, req *pb.SubmitSnapshotJobRequest) (*pb.SubmitSnapshotJobResponse, error) {
	return unary(ctx, c.Snapshots.SubmitSnapshotJob, req)
}

// SubmitMPS calls SubmitSnapshotJob with an MPS JSON request.
func (c *Client) SubmitMPS(ctx context.Context, doc []byte) (*pb.SubmitSnapshotJobResponse, error) {
	req := &pb.SubmitSnapshotJobRequest{}
	if err := FromMPS(doc, req); err != nil {
		return nil, err
	}
	return c.Submit(ctx, req)
}

// SnapshotArgs describes one synchronous snapshot.
type SnapshotArgs struct {
	Bucket, Object, Location   string
	OutputBucket, OutputObject string // OutputBucket defaults to Bucket
	TimeMs                     int64
	Width, Height              int32 // 0: not set
	FrameType                  string
}

// Snapshot takes one synchronous snapshot and returns the finished job.
func (c *Client) Snapshot(ctx context.Context, a SnapshotArgs) (*pb.SnapshotJob, error) {
	out := a.OutputBucket
	if out == "" {
		out = a.Bucket
	}
	config := &pb.SnapshotConfig{
		OutputFile: &pb.OSSFile{Bucket: out, Location: a.Location, Object: a.OutputObject},
		Time:       proto.Int64(a.TimeMs),
		FrameType:  a.FrameType,
	}
	if a.Width > 0 {
		config.Width = proto.Int32(a.Width)
	}
	if a.Height > 0 {
		config.Height = proto.Int32(a.Height)
	}
	resp, err := c.Submit(ctx, &pb.SubmitSnapshotJobRequest{
		Input:          &pb.OSSFile{Bucket: a.Bucket, Location: a.Location, Object: a.Object},
		SnapshotConfig: config,
	})
	if err != nil {
		return nil, err
	}
	return resp.GetSnapshotJob(), nil
}

// Query calls QuerySnapshotJobList.
func (c *Client) Query(ctx context.Context, req *pb.QuerySnapshotJobListRequest) (*pb.QuerySnapshotJobListResponse, error) {
	return unary(ctx, c.Snapshots.QuerySnapshotJobList, req)
}

// Cancel calls CancelSnapshotJob and returns the job, now "Cancelled".
func (c *Client) Cancel(ctx context.Context, jobID string) (*pb.SnapshotJob, error) {
	resp, err := unary(ctx, c.Snapshots.CancelSnapshotJob, &pb.CancelSnapshotJobRequest{SnapshotJobId: jobID})
	if err != nil {
		return nil, err
	}
	return resp.GetSnapshotJob(), nil
}

// Watch follows the job with WatchSnapshotJob, calling onEvent (if not nil) for every event,
// and returns the job's final state when the stream ends.
func (c *Client) Watch(ctx context.Context, jobID string, onEvent func(*pb.SnapshotJobEvent)) (*pb.SnapshotJob, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Snapshots.WatchSnapshotJob(ctx, &pb.WatchSnapshotJobRequest{SnapshotJobId: jobID})
	if err != nil {
		return nil, AsError(err, nil)
	}
	var last *pb.SnapshotJob
	for {
		event, err := stream.Recv()
		if err == io.EOF {
			return last, nil
		}
		if err != nil {
			return nil, AsError(err, stream.Trailer())
		}
		if onEvent != nil {
			onEvent(event)
		}
		last = event.GetSnapshotJob()
	}
}

// AddPipeline calls AddPipeline.
func (c *Client) AddPipeline(ctx context.Context, req *pb.AddPipelineRequest) (*pb.AddPipelineResponse, error) {
	return unary(ctx, c.Pipelines.AddPipeline, req)
}

// UpdatePipeline calls UpdatePipeline.
func (c *Client) UpdatePipeline(ctx context.Context, req *pb.UpdatePipelineRequest) (*pb.UpdatePipelineResponse, error) {
	return unary(ctx, c.Pipelines.UpdatePipeline, req)
}

// QueryPipelineList calls QueryPipelineList.
func (c *Client) QueryPipelineList(ctx context.Context, ids ...string) (*pb.QueryPipelineListResponse, error) {
	return unary(ctx, c.Pipelines.QueryPipelineList, &pb.QueryPipelineListRequest{PipelineIds: ids})
}

// SearchPipeline calls SearchPipeline.
func (c *Client) SearchPipeline(ctx context.Context, req *pb.SearchPipelineRequest) (*pb.SearchPipelineResponse, error) {
	return unary(ctx, c.Pipelines.SearchPipeline, req)
}

// DeletePipeline calls DeletePipeline.
func (c *Client) DeletePipeline(ctx context.Context, pipelineID string) (*pb.DeletePipelineResponse, error) {
	return unary(ctx, c.Pipelines.DeletePipeline, &pb.DeletePipelineRequest{PipelineId: pipelineID})
}
