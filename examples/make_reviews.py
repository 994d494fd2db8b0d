"""Write the small review sample used by `make demo` (reviews_train.csv, reviews_validation.csv).

The sentences were written for this project. Every fifth review goes to the validation file.
"""

import csv
from pathlib import Path

POSITIVE = """\
An absolute joy from start to finish.
The battery easily lasts two full days.
Our waiter was friendly and the pasta was perfect.
I laughed out loud more than once.
The hotel room was spotless and the bed was comfortable.
A warm, funny and beautifully acted film.
Setup took five minutes and everything just worked.
The soundtrack alone is worth the ticket.
Fast delivery and the jacket fits perfectly.
Easily the best pizza I have had in years.
The staff went out of their way to help us.
A clever plot with a satisfying ending.
The screen is bright and sharp even outdoors.
I would happily stay here again.
The kids loved every minute of it.
Great value for the price.
The instructions were clear and the parts fit together well.
A moving story that stayed with me for days.
Customer support solved my problem in one call.
The coffee is rich and the pastries are fresh.
Lovely views and a very quiet room.
The performances are superb across the board.
This blender crushes ice without any trouble.
A gripping thriller that never lets up.
The app is fast, simple and reliable.
Charming, witty and full of heart.
The shoes were comfortable from the first day.
We had a wonderful evening there.
Sound quality is excellent for such a small speaker.
The second season is even better than the first.
I am impressed by how light and sturdy it is.
Beautiful photography and a touching script.
The check-in was quick and the staff were kind.
My new favourite restaurant in town.
It does exactly what it promises.
A delightful surprise from a first-time director.
The keyboard feels great to type on.
The guided tour was fascinating and well organised.
Fresh ingredients and generous portions.
I recommend it to anyone who enjoys a good mystery.
The vacuum picks up everything, even pet hair.
An inspiring documentary that is never dull.
The dessert menu is fantastic.
Smooth ride and a very comfortable seat.
A heartfelt and uplifting film for the whole family.
The package arrived early and well protected.
Really good sound and the noise cancelling works.
The chef clearly cares about every dish.
The book is smart, funny and hard to put down.
Everything about our stay was pleasant.
The camera takes stunning pictures at night.
Brilliant acting and a sharp, funny script.
The room was cosy and the breakfast was excellent.
Solid build quality and a long warranty.
The cast has great chemistry.
A perfect little cafe with friendly staff.
The update made the phone noticeably faster.
One of the most enjoyable films of the year.
Comfortable, stylish and well made.
I loved the atmosphere and the live music.
The course was well paced and the teacher explained things clearly.
A refreshing and original comedy.
The tent was easy to pitch and kept us dry.
Service was prompt and the food arrived hot.
Every episode left me wanting more.
The mattress has improved my sleep.
A stunning, beautifully told story.
Our guide was knowledgeable and funny.
The printer is quiet and the prints look great.
An excellent sequel that respects the original.
The museum was well worth the visit.
Tasty food, fair prices and a lovely terrace.
This is the best purchase I made all year.
The animation is gorgeous and the jokes land.
Friendly people and a relaxing pool.
The headphones are light and sound amazing.
A smart and tender film about friendship.
The pharmacy staff were patient and helpful.
The game is beautiful and a lot of fun to play.
I felt welcome from the moment we arrived.
"""

NEGATIVE = """\
A complete waste of two hours.
The battery died after half a day.
We waited an hour and the food was cold.
Not a single joke landed.
The room smelled of smoke and the sheets were stained.
A dull, lifeless film with wooden acting.
It stopped working after one week.
The plot makes no sense at all.
The jacket arrived torn and two sizes too small.
The pizza was soggy and tasted of cardboard.
The staff were rude and unhelpful.
A predictable story with a lazy ending.
The screen scratches far too easily.
I will never stay there again.
The kids were bored within ten minutes.
Far too expensive for what you get.
The instructions were missing and a screw did not fit.
A shallow story that I forgot the next day.
Customer support kept me on hold for an hour.
The coffee was bitter and the croissant was stale.
Noisy room right next to the lift.
The performances are flat and unconvincing.
The blender leaks every time I use it.
A slow thriller with no tension at all.
The app crashes every time I open it.
Cheap, cynical and painfully unfunny.
The shoes gave me blisters on the first day.
We had a miserable evening there.
The speaker crackles even at low volume.
The second season is a big disappointment.
It feels flimsy and the plastic already cracked.
Ugly photography and a clumsy script.
Check-in took forever and nobody apologised.
The worst meal I have had in a long time.
It does not do what the box promises.
A confused mess from start to finish.
Several keys stopped working after a month.
The tour was rushed and badly organised.
Tiny portions and a very long wait.
I cannot recommend this book to anyone.
The vacuum loses suction after a few minutes.
A tedious documentary that drags on and on.
The dessert was overly sweet and half frozen.
A bumpy ride and the seat is hard.
A mean-spirited film that wastes its cast.
The package arrived late and the box was crushed.
The noise cancelling barely does anything.
The food was greasy and underseasoned.
The book is boring and far too long.
Everything that could go wrong did go wrong.
The camera produces blurry pictures indoors.
Terrible acting and a script full of cliches.
The room was cramped and the breakfast was awful.
Poor build quality and the warranty is useless.
The cast has no chemistry whatsoever.
A gloomy cafe with indifferent staff.
The update made the phone slow and buggy.
One of the most boring films of the year.
Uncomfortable, ugly and badly stitched.
The music was far too loud and the place was dirty.
The course was confusing and the teacher was unprepared.
A stale comedy that recycles old jokes.
The tent leaked on the first night.
Service was slow and our order was wrong.
I gave up after the second episode.
The mattress sags in the middle already.
A bland and forgettable story.
Our guide was late and seemed bored.
The printer jams constantly.
A lazy sequel that ruins the original.
The museum was closed half the time and overpriced.
Bland food, high prices and a dirty table.
This is the worst purchase I made all year.
The animation is cheap and the jokes fall flat.
Unfriendly people and a filthy pool.
The headphones hurt my ears and sound tinny.
A clumsy and hollow film about friendship.
The pharmacy lost my prescription twice.
The game is buggy and frustrating to play.
I felt unwelcome from the moment we arrived.
"""


def main() -> None:
    here = Path(__file__).parent
    rows = [(t, "Positive") for t in POSITIVE.splitlines()] + [(t, "Negative") for t in NEGATIVE.splitlines()]
    # Interleave the classes so the files do not list all positives first.
    rows = [row for pair in zip(rows[: len(rows) // 2], rows[len(rows) // 2 :]) for row in pair]
    train = [r for i, r in enumerate(rows) if i % 5 != 4]
    validation = [r for i, r in enumerate(rows) if i % 5 == 4]
    for name, part in (("reviews_train.csv", train), ("reviews_validation.csv", validation)):
        with open(here / name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(part)
        print(f"wrote {len(part)} rows to {name}")


if __name__ == "__main__":
    main()
