// node --test clients/node/client.test.mjs
//
// The converter tests run on their own. The end-to-end tests need a running server and a
// video in its storage, named by:
//   MPS_SNAPSHOT_TARGET  the server, e.g. 127.0.0.1:50051
//   MPS_TEST_BUCKET      a bucket holding the video; outputs are written there too
//   MPS_TEST_OBJECT      the video's object key (at least 4 s long)
// tests/test_node_client.py sets them against the in-process test server.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { MpsApiError, MpsClient, decodeStatusDetails, fromMps, grpc, rpcRoot, toMps } from "./mps-client.mjs";

const target = process.env.MPS_SNAPSHOT_TARGET;
const bucket = process.env.MPS_TEST_BUCKET;
const object = process.env.MPS_TEST_OBJECT;
const skipServer =
  target && bucket && object ? false : "set MPS_SNAPSHOT_TARGET, MPS_TEST_BUCKET and MPS_TEST_OBJECT to run against a server";

describe("MPS JSON converter", () => {
  test("accepts MPS's strings for numbers and flags, JSON text for objects, and drops common parameters", () => {
    const request = fromMps("SubmitSnapshotJobRequest", {
      Action: "SubmitSnapshotJob",
      Input: '{"Bucket":"in","Location":"oss-cn-hangzhou","Object":"a%2Fb.mp4"}',
      SnapshotConfig: {
        OutputFile: { Bucket: "out", Object: "{Count}.jpg" },
        Time: "1000",
        Interval: "1",
        Num: "3",
        Width: 320,
        TileOut: { IsKeepCellPic: "false", Lines: "2" },
        SubOut: { IsSptFrag: "TRUE" },
        TimeArray: { TimePointList: "[1500, 2500.25]" },
      },
      UserData: "job-1",
    });
    assert.deepEqual(request, {
      input: { bucket: "in", location: "oss-cn-hangzhou", object: "a%2Fb.mp4" },
      snapshot_config: {
        output_file: { bucket: "out", object: "{Count}.jpg" },
        time: "1000",
        interval: "1",
        num: 3,
        width: 320,
        tile_out: { is_keep_cell_pic: false, lines: 2 },
        sub_out: { is_spt_frag: true },
        time_array: { time_point_list: [1500, 2500.25] },
      },
      user_data: "job-1",
    });
  });

  test("takes proto field names and lowerCamel names too, and comma-separated id lists", () => {
    assert.deepEqual(fromMps("SubmitSnapshotJobRequest", { snapshot_config: { frameType: "intra" } }), {
      snapshot_config: { frame_type: "intra" },
    });
    assert.deepEqual(fromMps("QuerySnapshotJobListRequest", { SnapshotJobIds: "a, b,c", MaximumPageSize: "5" }), {
      snapshot_job_ids: ["a", "b", "c"],
      maximum_page_size: "5",
    });
    const range = fromMps("QuerySnapshotJobListRequest", { StartOfJobCreatedTimeRange: "2021-05-19T03:11:48Z" });
    assert.deepEqual(range.start_of_job_created_time_range, { seconds: "1621393908", nanos: 0 });
  });

  test("refuses unknown elements and values of the wrong kind", () => {
    assert.throws(() => fromMps("SubmitSnapshotJobRequest", { SnapshotConfig: { Tiem: "1" } }), /SnapshotConfig\.Tiem/);
    assert.throws(() => fromMps("SubmitSnapshotJobRequest", { SnapshotConfig: { Num: "three" } }), /integer/);
    assert.throws(
      () => fromMps("SubmitSnapshotJobRequest", { SnapshotConfig: { TileOut: { IsKeepCellPic: "yes" } } }),
      /"true" or "false"/,
    );
  });

  test("writes responses with MPS element names", () => {
    const job = toMps("SnapshotJob", {
      id: "x",
      state: "Success",
      creation_time: { seconds: "1621393908", nanos: 0 },
      images: [{ object: "a.jpg", time: 1000 }],
      sprites: [],
    });
    assert.deepEqual(job, { Id: "x", State: "Success", CreationTime: "2021-05-19T03:11:48Z", Images: [{ Object: "a.jpg", Time: 1000 }] });
  });

  test("decodes a google.rpc.Status with ErrorInfo, BadRequest and RetryInfo", () => {
    const pack = (name, fields) => {
      const type = rpcRoot.lookupType(name);
      return { type_url: `type.googleapis.com/${name}`, value: type.encode(type.fromObject(fields)).finish() };
    };
    const Status = rpcRoot.lookupType("google.rpc.Status");
    const bytes = Status.encode(
      Status.fromObject({
        code: 8,
        message: "full",
        details: [
          pack("google.rpc.ErrorInfo", { reason: "Throttling.PipelineQueueFull", domain: "mps-snapshot", metadata: { requestId: "R" } }),
          pack("google.rpc.BadRequest", { field_violations: [{ field: "pipeline_id", description: "d" }] }),
          pack("google.rpc.RetryInfo", { retry_delay: { seconds: 1, nanos: 500000000 } }),
        ],
      }),
    ).finish();
    const rich = decodeStatusDetails(bytes);
    assert.equal(rich.reason, "Throttling.PipelineQueueFull");
    assert.equal(rich.metadata.requestId, "R");
    assert.deepEqual(rich.violations, [{ field: "pipeline_id", description: "d" }]);
    assert.equal(rich.retryDelayMs, 1500);
  });
});

describe("against the server", { skip: skipServer }, () => {
  let client;
  before(() => {
    client = new MpsClient(target, { timeoutMs: 30000 });
  });
  after(() => client.close());

  test("a synchronous snapshot", async () => {
    const job = await client.snapshot({
      bucket,
      object,
      outputObject: "node/sync/{FileName}-{SnapshotTime}.jpg",
      timeMs: 1000,
      width: 320,
    });
    assert.equal(job.State, "Success");
    assert.equal(job.Count, 1);
    assert.match(job.Id, /^[0-9a-f]{32}$/);
    assert.equal(job.Images.length, 1);
    assert.match(job.Images[0].Object, /^node\/sync\/.+-1000\.jpg$/);
    assert.equal(job.Images[0].Width, 320);
    assert.ok(Math.abs(job.Images[0].Time - 1000) < 50, `frame at ${job.Images[0].Time} ms`);
  });

  test("an asynchronous job from MPS JSON, followed with WatchSnapshotJob until it ends", async () => {
    const response = await client.submit({
      Input: { Bucket: bucket, Location: "oss-cn-hangzhou", Object: object },
      SnapshotConfig: {
        OutputFile: { Bucket: bucket, Location: "oss-cn-hangzhou", Object: "node/seq/{Count}.jpg" },
        Time: "1000",
        Interval: "1",
        Num: "3",
      },
      UserData: "node-client-1",
    });
    assert.match(response.RequestId, /\S/);
    const submitted = response.SnapshotJob;
    assert.equal(submitted.UserData, "node-client-1");
    assert.ok(["Submitted", "Snapshoting"].includes(submitted.State), submitted.State);

    const events = [];
    const final = await client.wait(submitted.Id, { timeoutMs: 60000, onEvent: (e) => events.push(e) });
    assert.equal(events[0].Kind, "KIND_INITIAL");
    assert.equal(events.at(-1).Kind, "KIND_STATE_CHANGED");
    assert.equal(final.State, "Success", final.Message);
    assert.equal(final.Count, 3);
    assert.deepEqual(
      final.Images.map((i) => i.Object),
      ["node/seq/00001.jpg", "node/seq/00002.jpg", "node/seq/00003.jpg"],
    );
    assert.deepEqual(
      final.Images.map((i) => i.RequestedTime),
      [1000, 2000, 3000],
    );
    const written = events.filter((e) => e.Kind === "KIND_IMAGE_WRITTEN").map((e) => e.Progress.ImagesDone);
    assert.deepEqual(written, [1, 2, 3]);

    const listed = await client.query([submitted.Id, "0".repeat(32)]);
    assert.equal(listed.SnapshotJobList[0].State, "Success");
    assert.deepEqual(listed.NonExistSnapshotJobIds, ["0".repeat(32)]);
  });

  test("the MPS error code from the status details", async () => {
    const missing = await client.snapshot({ bucket, object: "no/such.mp4", outputObject: "node/x.jpg" }).then(
      () => assert.fail("expected an error"),
      (err) => err,
    );
    assert.ok(missing instanceof MpsApiError);
    assert.equal(missing.code, "InvalidParameter.ResourceNotFound");
    assert.equal(missing.grpcCode, grpc.status.NOT_FOUND);
    assert.equal(missing.grpcStatus, "NOT_FOUND");
    assert.match(missing.requestId, /\S/);
    assert.match(missing.details, /RequestId/);

    await assert.rejects(client.snapshot({ bucket, object, outputObject: "node/x.jpg", width: 4 }), (err) => {
      assert.equal(err.code, "InvalidParameter.OutOfRange");
      assert.equal(err.grpcStatus, "INVALID_ARGUMENT");
      assert.deepEqual(
        err.violations.map((v) => v.field),
        ["snapshot_config.width"],
      );
      return true;
    });

    // A finished job cannot be cancelled; an unknown one cannot be watched.
    const done = await client.snapshot({ bucket, object, outputObject: "node/cancel.jpg", timeMs: 0 });
    await assert.rejects(client.cancel(done.Id), { code: "IncorrectJobState", grpcStatus: "FAILED_PRECONDITION" });
    await assert.rejects(async () => {
      for await (const _event of client.watch("f".repeat(32))) {
        // no events expected
      }
    }, { code: "InvalidParameter.ResourceNotFound" });
  });

  test("outputs beyond MPS: WebP, fit, percent times, auto grid, animated preview, smart picks", async () => {
    const sync = await client.submit({
      Input: { Bucket: bucket, Location: "oss-cn-hangzhou", Object: object },
      SnapshotConfig: {
        OutputFile: { Bucket: bucket, Location: "oss-cn-hangzhou", Object: "node/beyond/pad.webp" },
        TimePercent: "50",
        Width: "200",
        Height: "200",
        Fit: "pad",
        PadColor: "#ff0000",
        Quality: "80",
        SmartPick: { Window: "1000" },
      },
    });
    const image = sync.SnapshotJob.Images[0];
    assert.equal(sync.SnapshotJob.State, "Success");
    assert.equal(image.Object, "node/beyond/pad.webp");
    assert.deepEqual([image.Width, image.Height, image.RequestedTime], [200, 200, 5000]);

    const submitted = await client.submit({
      Input: { Bucket: bucket, Location: "oss-cn-hangzhou", Object: object },
      SnapshotConfig: {
        OutputFile: { Bucket: bucket, Location: "oss-cn-hangzhou", Object: "node/beyond/{Count}.jpg" },
        TileOutputFile: { Bucket: bucket, Location: "oss-cn-hangzhou", Object: "node/beyond/grid.png" },
        TileOut: { AutoCells: "4", CellWidth: "64", CellHeight: "36", IsKeepCellPic: "false" },
        AnimatedOut: { Start: "1000", Duration: "1000", Fps: "5", Width: "96" },
        AnimatedOutputFile: { Bucket: bucket, Location: "oss-cn-hangzhou", Object: "node/beyond/preview.gif" },
      },
    });
    const final = await client.wait(submitted.SnapshotJob.Id, { timeoutMs: 60000 });
    assert.equal(final.State, "Success", final.Message);
    assert.deepEqual([final.Sprites[0].Width, final.Sprites[0].Height, final.Sprites[0].CellCount], [128, 72, 4]);
    assert.equal(final.Animated.Object, "node/beyond/preview.gif");
    assert.equal(final.Animated.Format, "gif");
    assert.equal(final.Animated.FrameCount, 5);
    assert.equal(final.Animated.Width, 96);
  });

  test("pipelines: add, update, query, search, delete", async () => {
    const added = await client.addPipeline({ Name: "node-pipeline", MaxConcurrentJobs: "1", QueueCapacity: "10" });
    const id = added.Pipeline.Id;
    assert.equal(added.Pipeline.State, "Active");
    const updated = await client.updatePipeline({ PipelineId: id, Name: "node-pipeline-2", State: "Paused" });
    assert.equal(updated.Pipeline.State, "Paused");
    const found = await client.queryPipelineList([id, "0".repeat(32)]);
    assert.equal(found.PipelineList[0].Name, "node-pipeline-2");
    assert.deepEqual(found.NonExistPids, ["0".repeat(32)]);
    const paused = await client.searchPipeline({ State: "Paused", PageSize: "100" });
    assert.ok(paused.PipelineList.some((p) => p.Id === id));
    assert.deepEqual(await client.deletePipeline(id).then((r) => r.PipelineId), id);
    await assert.rejects(client.deletePipeline(id), { code: "InvalidParameter.ResourceNotFound" });
  });
});
