package lambdaflow;

import java.sql.Timestamp;
import java.time.Instant;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import org.apache.spark.api.java.function.MapFunction;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.catalyst.plans.logical.EventTimeWatermark;
import org.apache.spark.sql.streaming.ExpiredTimerInfo;
import org.apache.spark.sql.streaming.MapState;
import org.apache.spark.sql.streaming.OutputMode;
import org.apache.spark.sql.streaming.StatefulProcessor;
import org.apache.spark.sql.streaming.TTLConfig;
import org.apache.spark.sql.streaming.TimeMode;
import org.apache.spark.sql.streaming.TimerValues;
import org.apache.spark.sql.types.Metadata;
import org.apache.spark.sql.types.StructType;
import scala.Tuple2;
import scala.collection.Iterator;
import scala.jdk.javaapi.CollectionConverters;

/**
 * Spark's dropDuplicatesWithinWatermark, with state whose upkeep does not grow with the ids it holds.
 *
 * <p>The semantics are Spark's: an id is held until the watermark passes its first copy's event time plus
 * the watermark's delay, and a copy seen after that counts again; rows behind the watermark are dropped
 * (and counted as such by Spark). Of an id's copies in one micro-batch, the one with the lowest Kafka
 * coordinates (the first received) is kept.
 *
 * <p>How: the ids are spread over {@link #GROUPS} state groups by hash, and each group keeps a map from id to
 * its expiry. A new id costs a map lookup and a write. Each group forgets its expired ids by scanning its map
 * on an event-time timer every half delay, the groups' timers staggered over that half delay so that a
 * micro-batch scans one or two groups: an id is read a few times over its life (held for up to ~2 delays).
 * Spark's own operator reads every id it holds on every micro-batch; keying the state by id with a timer each
 * would make every id a group of its own, paying Spark's per-group and per-timer work for each.
 */
public final class DedupeWithinWatermark extends StatefulProcessor<Integer, Row, Row> {
  static final int GROUPS = 256;
  private final int idIndex;
  private final int timeIndex;
  private final int partitionIndex;
  private final int offsetIndex;
  private final long delayMs;
  private final long scanEveryMs;
  private static final long NOT_FIRING = Long.MIN_VALUE;
  private transient MapState<String, Long> expiryOfId;

  private DedupeWithinWatermark(StructType schema, String idColumn, String timeColumn) {
    this.idIndex = schema.fieldIndex(idColumn);
    this.timeIndex = schema.fieldIndex(timeColumn);
    this.partitionIndex = indexOrMinusOne(schema, "_partition");
    this.offsetIndex = indexOrMinusOne(schema, "_offset");
    Metadata time = schema.apply(timeColumn).metadata();
    if (!time.contains(EventTimeWatermark.delayKey())) {
      throw new IllegalArgumentException("the events have no watermark on " + timeColumn);
    }
    this.delayMs = time.getLong(EventTimeWatermark.delayKey()); // the delay of the stream's watermark
    this.scanEveryMs = Math.max(delayMs / 2, 1000);
  }

  /** The events without repeated ids within their watermark, which must be on timeColumn. */
  public static Dataset<Row> apply(Dataset<Row> events, String idColumn, String timeColumn) {
    StructType schema = events.schema();
    int idIndex = schema.fieldIndex(idColumn);
    MapFunction<Row, Integer> groupOf = row -> groupOf(row.getString(idIndex));
    return events
        .groupByKey(groupOf, Encoders.INT())
        .transformWithState(
            new DedupeWithinWatermark(schema, idColumn, timeColumn),
            TimeMode.EventTime(),
            OutputMode.Append(),
            Encoders.row(schema));
  }

  static int groupOf(String id) {
    return Math.floorMod(id.hashCode(), GROUPS); // String.hashCode is fixed by the Java spec: stable state
  }

  @Override
  public void init(OutputMode outputMode, TimeMode timeMode) {
    expiryOfId = getHandle().getMapState("expiry_of_id", Encoders.STRING(), Encoders.LONG(), TTLConfig.NONE());
  }

  @Override
  public Iterator<Row> handleInputRows(Integer group, Iterator<Row> rows, TimerValues timerValues) {
    Map<String, Row> firstCopies = new HashMap<>();
    while (rows.hasNext()) {
      Row row = rows.next();
      firstCopies.merge(row.getString(idIndex), row, (kept, copy) -> receivedBefore(copy, kept) ? copy : kept);
    }
    long watermark = timerValues.getCurrentWatermarkInMs();
    long earliestExpiry = Long.MAX_VALUE;
    List<Row> kept = new ArrayList<>(firstCopies.size());
    for (Map.Entry<String, Row> first : firstCopies.entrySet()) {
      Long heldUntil = expiryOfId.getValue(first.getKey());
      if (heldUntil != null && heldUntil > watermark) {
        continue; // a repeat within the watermark
      }
      long expiry = epochMillis(first.getValue().get(timeIndex)) + delayMs;
      expiryOfId.updateValue(first.getKey(), expiry); // an expired id not scanned away yet starts afresh
      earliestExpiry = Math.min(earliestExpiry, expiry);
      kept.add(first.getValue());
    }
    if (!kept.isEmpty()) {
      scanBy(group, earliestExpiry, NOT_FIRING);
    }
    return CollectionConverters.asScala(kept.iterator());
  }

  @Override
  public Iterator<Row> handleExpiredTimer(
      Integer group, TimerValues timerValues, ExpiredTimerInfo expiredTimerInfo) {
    long watermark = timerValues.getCurrentWatermarkInMs();
    long earliestLeft = Long.MAX_VALUE;
    List<String> expired = new ArrayList<>();
    Iterator<Tuple2<String, Long>> held = expiryOfId.iterator();
    while (held.hasNext()) {
      Tuple2<String, Long> idAndExpiry = held.next();
      if (idAndExpiry._2() <= watermark) {
        expired.add(idAndExpiry._1());
      } else {
        earliestLeft = Math.min(earliestLeft, idAndExpiry._2());
      }
    }
    for (String id : expired) {
      expiryOfId.removeKey(id);
    }
    if (earliestLeft != Long.MAX_VALUE) {
      scanBy(group, earliestLeft, expiredTimerInfo.getExpiryTimeInMs());
    }
    return CollectionConverters.asScala(java.util.Collections.<Row>emptyIterator());
  }

  /** Makes sure the group is scanned once the watermark passes `expiry`: at the group's first scan time at
   * or after it, unless another scan is due by then (that scan schedules the next). `firing`: the timer
   * being handled, if any, which does not count. */
  private void scanBy(int group, long expiry, long firing) {
    long offset = group * (scanEveryMs / GROUPS); // staggered, so not every group scans in one micro-batch
    long scanAt = Math.floorDiv(expiry - offset + scanEveryMs - 1, scanEveryMs) * scanEveryMs + offset;
    Iterator<Object> timers = getHandle().listTimers(); // read to the end: closes the store's iterator
    boolean due = false;
    while (timers.hasNext()) {
      long timer = ((Number) timers.next()).longValue();
      due |= timer <= scanAt && timer != firing;
    }
    if (!due) {
      getHandle().registerTimer(scanAt);
    }
  }

  private boolean receivedBefore(Row a, Row b) {
    if (partitionIndex < 0 || offsetIndex < 0) {
      return false;
    }
    int byPartition = Integer.compare(a.getInt(partitionIndex), b.getInt(partitionIndex));
    return byPartition < 0 || (byPartition == 0 && a.getLong(offsetIndex) < b.getLong(offsetIndex));
  }

  private static long epochMillis(Object time) {
    return time instanceof Instant ? ((Instant) time).toEpochMilli() : ((Timestamp) time).getTime();
  }

  private static int indexOrMinusOne(StructType schema, String name) {
    return java.util.Arrays.asList(schema.fieldNames()).indexOf(name);
  }
}
