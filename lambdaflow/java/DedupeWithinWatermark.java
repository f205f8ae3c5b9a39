package lambdaflow;

import java.sql.Timestamp;
import java.time.Instant;
import java.util.Collections;

import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Encoders;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.catalyst.plans.logical.EventTimeWatermark;
import org.apache.spark.sql.functions;
import org.apache.spark.sql.streaming.ExpiredTimerInfo;
import org.apache.spark.sql.streaming.OutputMode;
import org.apache.spark.sql.streaming.StatefulProcessor;
import org.apache.spark.sql.streaming.TimeMode;
import org.apache.spark.sql.streaming.TimerValues;
import org.apache.spark.sql.types.Metadata;
import org.apache.spark.sql.types.StructType;
import scala.collection.Iterator;
import scala.jdk.javaapi.CollectionConverters;

/**
 * Spark's dropDuplicatesWithinWatermark, with state that expires by event-time timer.
 *
 * <p>Spark's own operator finds the ids to forget by reading every id it holds, on every micro-batch
 * (~0.45 us an id with RocksDB: ~1 s a micro-batch at 5,000 events/s and a 10-minute watermark). Here each
 * id registers a timer at its expiry, and Spark finds the expired ones by a range scan of its timer index,
 * so a micro-batch costs what it adds and what expires. The timer is the only state: an id is held while
 * its timer exists, and Spark deleting the timer when it fires forgets the id. The semantics are Spark's:
 * an id is held until the watermark passes its first copy's event time plus the delay, and a copy seen
 * after that counts again; rows behind the watermark are dropped (and counted as such by Spark). Of an
 * id's copies in one micro-batch, the one with the lowest Kafka coordinates (the first received) is kept.
 */
public final class DedupeWithinWatermark extends StatefulProcessor<String, Row, Row> {
  private final int timeIndex;
  private final int partitionIndex;
  private final int offsetIndex;
  private final long delayMs;
  private static final long NOT_HELD = Long.MIN_VALUE; // below any watermark

  private DedupeWithinWatermark(StructType schema, String timeColumn) {
    this.timeIndex = schema.fieldIndex(timeColumn);
    this.partitionIndex = indexOrMinusOne(schema, "_partition");
    this.offsetIndex = indexOrMinusOne(schema, "_offset");
    Metadata time = schema.apply(timeColumn).metadata();
    if (!time.contains(EventTimeWatermark.delayKey())) {
      throw new IllegalArgumentException("the events have no watermark on " + timeColumn);
    }
    this.delayMs = time.getLong(EventTimeWatermark.delayKey()); // the delay of the stream's watermark
  }

  /** The events without repeated ids within their watermark, which must be on timeColumn. */
  public static Dataset<Row> apply(Dataset<Row> events, String idColumn, String timeColumn) {
    StructType schema = events.schema();
    return events
        .groupBy(functions.col(idColumn))
        .as(Encoders.STRING(), Encoders.row(schema))
        .transformWithState(
            new DedupeWithinWatermark(schema, timeColumn),
            TimeMode.EventTime(),
            OutputMode.Append(),
            Encoders.row(schema));
  }

  @Override
  public void init(OutputMode outputMode, TimeMode timeMode) {}

  @Override
  public Iterator<Row> handleInputRows(String id, Iterator<Row> rows, TimerValues timerValues) {
    long held = heldUntil();
    if (held > timerValues.getCurrentWatermarkInMs()) {
      return empty(); // a repeat within the watermark
    }
    if (held != NOT_HELD) {
      // held past its expiry only because this micro-batch's timers run after its rows: forget it now
      getHandle().deleteTimer(held);
    }
    Row first = rows.next();
    while (rows.hasNext()) {
      Row copy = rows.next();
      if (receivedBefore(copy, first)) {
        first = copy;
      }
    }
    getHandle().registerTimer(epochMillis(first.get(timeIndex)) + delayMs);
    return CollectionConverters.asScala(Collections.singletonList(first).iterator());
  }

  @Override
  public Iterator<Row> handleExpiredTimer(
      String id, TimerValues timerValues, ExpiredTimerInfo expiredTimerInfo) {
    return empty(); // Spark deletes the timer, and with it the id
  }

  /** The expiry of the id's timer, or NOT_HELD. Reads the timers to the end, which closes the state store's
   * iterator. */
  private long heldUntil() {
    long held = NOT_HELD;
    Iterator<Object> timers = getHandle().listTimers();
    while (timers.hasNext()) {
      held = ((Number) timers.next()).longValue();
    }
    return held;
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

  private static Iterator<Row> empty() {
    return CollectionConverters.asScala(Collections.<Row>emptyIterator());
  }
}
